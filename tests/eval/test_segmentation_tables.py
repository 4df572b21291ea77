"""`ich_jax.eval.segmentation_tables` on six hand-made 2×2 slices of two studies: Dice on slices with blood,
Tables 5 and 6, Dice per subtype, rounds pooled, and the markdown (the smoke experiment end to end:
tests/experiments/test_physionet_patch_unet.py)."""
import json
import math

import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import segmentation_tables as T

SDH, EDH = LABELS.index("subdural"), LABELS.index("epidural")


def _preds() -> dict:
  """Study A: slices 0–2, study B: slices 3–5. Per slice, Dice / Jaccard of the predicted mask:
  0: 2/3, 1/2 (subdural) · 1: 1, 1 (epidural) · 2: both empty · 3: 0, 0 (subdural, missed) ·
  4: 0, 0 (blood predicted, none there) · 5: both empty."""
  ref = np.zeros((6, 2, 2), np.uint8)
  pred = np.zeros((6, 2, 2), np.uint8)
  ref[0, 0] = SDH                         # the reference mask holds the subtype's index
  pred[0, 0, 0] = 1
  ref[1, 0, 0] = pred[1, 0, 0] = EDH
  ref[3, 1] = SDH
  pred[4, 0, 0] = 1
  labels = np.zeros((6, 6), np.float32)
  labels[[0, 1, 3], 0] = 1
  labels[[0, 3], SDH] = 1
  labels[1, EDH] = 1
  prob = np.array([0.9, 0.6, 0.2, 0.3, 0.75, 0.1], np.float32)
  return {"mask": ref, "pred_mask": pred, "labels": labels, "probabilities": np.repeat(prob[:, None], 6, 1),
          "study_id": np.array([b"A"] * 3 + [b"B"] * 3)}


def test_method_metrics_by_hand():
  m = T.method_metrics(_preds())
  assert (m["n_slices"], m["n_slices_with_blood"], m["n_studies"]) == (6, 3, 2)
  assert m["dice_slices_with_blood"] == pytest.approx((2 / 3 + 1 + 0) / 3)
  assert m["jaccard_slices_with_blood"] == pytest.approx(0.5)
  t5 = m["table5"]
  # Per study with blood: A Jaccard (1/2 + 1) / 2, Dice (2/3 + 1) / 2; B 0 and 0.
  assert t5["jaccard"] == pytest.approx({"min": 0, "max": 0.75, "std": 0.375, "mean": 0.375, "n": 2})
  assert t5["dice"] == pytest.approx({"min": 0, "max": 5 / 6, "std": 5 / 12, "mean": 5 / 12, "n": 2})
  # Slice level within each study, at 0.5: A finds both slices with blood and clears its normal one; B misses
  # its slice with blood and flags one of its two normal slices.
  assert t5["sensitivity"] == pytest.approx({"min": 0, "max": 1, "std": 0.5, "mean": 0.5, "n": 2})
  assert t5["specificity"] == pytest.approx({"min": 0.5, "max": 1, "std": 0.25, "mean": 0.75, "n": 2})
  assert m["pooled"] == pytest.approx({"sensitivity": 2 / 3, "specificity": 2 / 3, "accuracy": 4 / 6})
  assert [r["threshold"] for r in m["table6"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
  assert m["table6"][2] == pytest.approx({"threshold": 0.7, "sensitivity": 1 / 3, "specificity": 2 / 3,
                                         "accuracy": 0.5})
  per = m["dice_per_subtype"]
  assert per["subdural"] == pytest.approx({"n_slices": 2, "dice": 1 / 3}) and per["epidural"] == {"n_slices": 1,
                                                                                                  "dice": 1.0}
  assert per["intraventricular"]["n_slices"] == 0 and math.isnan(per["intraventricular"]["dice"])


def _round(d, preds, rows, **files):
  d.mkdir(parents=True)
  if rows is not None:
    np.savez(d / "predictions.npz", **{k: v[rows] for k, v in preds.items()})
  for name, content in files.items():
    (d / f"{name}.json").write_text(json.dumps(content))
  return d


@pytest.fixture
def rounds(tmp_path):
  preds = _preds()
  extra = {**preds, "z_position": np.arange(6.0)}    # in one round only: not pooled
  return [("threshold", 0, _round(tmp_path / "fold0" / "threshold", extra, slice(0, 3),
                                  thresholds={"lower": 120, "upper": 200, "train_jaccard": 0.25})),
          ("threshold", 1, _round(tmp_path / "fold1" / "threshold", preds, slice(3, 6))),
          ("full_unet", 0, _round(tmp_path / "fold0" / "full_unet", preds, None,
                                  selection={"step": 2, "scores": {"1": 0.2, "2": 0.3}}))]


def test_rounds_are_pooled_per_method(rounds):
  pooled = T.load_pooled([d for _, _, d in rounds])
  assert sorted(pooled) == ["labels", "mask", "pred_mask", "probabilities", "study_id"]
  np.testing.assert_array_equal(pooled["study_id"], _preds()["study_id"])
  assert T.load_pooled([rounds[2][2]]) is None
  t = T.tables(rounds)
  assert t["methods"]["full_unet"] is None and t["methods"]["patch_unet"] is None
  threshold = t["methods"]["threshold"]
  assert threshold["folds"] == [0, 1]
  assert threshold["dice_slices_with_blood"] == pytest.approx(T.method_metrics(_preds())["dice_slices_with_blood"])
  assert t["rounds"] == {"fold0/threshold": {"lower": 120, "upper": 200, "train_jaccard": 0.25},
                         "fold0/full_unet": {"step": 2, "scores": {"1": 0.2, "2": 0.3}}}


def test_markdown_tables_and_methods_not_run(rounds):
  text = T.format_markdown(T.tables(rounds), title="Seed 002", dataset="physionet_ct_ich/slices", folds="rounds 0, 1")
  lines = text.splitlines()
  assert lines[:3] == ["# Seed 002", "", "Dataset physionet_ct_ich/slices; rounds 0, 1. Held-out predictions of "
                                         "every round run, pooled."]
  for row in ("| Threshold baseline (grid search) | 3 | 6 | 0.556 | 0.500 |",
              "| U-Net, full slices | not run | not run | not run | not run |",
              "| Mean | 0.375 | 0.417 | 50.0 | 75.0 |",
              "| STD | 0.375 | 0.417 | 50.0 | 25.0 |",
              "| Pooled slices | 0.500 | 0.556 | 66.7 | 66.7 |",
              "| 0.7 | 33.3 | 66.7 | 50.0 |",
              "| subdural | 2 | 0.333 |",
              "| intraventricular | 0 | n/a |",
              "| fold0/full_unet | checkpoint 2 (validation Jaccard 0.300) |",
              "| fold0/threshold | thresholds 120–200 (training Jaccard 0.250) |"):
    assert row in lines, row
  assert "The baseline's slice probability is 0 or 1, so every threshold gives the same row." in lines
  assert lines.count("Not run: no round of this method has predictions.") == 2
