"""Seed 002, smoke variant, end to end through the stage runner: per-fold rounds, the threshold baseline,
checkpoint selection, Tables 5 and 6; and the patch U-Net exported as a bundle that predicts by sliding window."""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from configs import physionet_patch_unet
from ich_jax import bundle as bundle_lib
from ich_jax import experiments
from ich_jax.bundle import export, members
from ich_jax.data import pipeline
from ich_jax.eval import metrics as M
from ich_jax.experiments.physionet_patch_unet import METHODS
from ich_jax.models import maps
from ich_jax.train import evaluate, loop
from tests.experiments.conftest import run_smoke


def test_per_fold_stages_get_their_rounds_splits(tiny_data_dir, tmp_path):
  p = physionet_patch_unet.get_config("smoke")
  p.dataset.data_dir = tiny_data_dir
  p.experiment.cv.folds = (0, 3)
  plan = experiments.stages(p, tmp_path)
  assert [s.name for s in plan] == [f"fold{k}/{m}" for k in (0, 3) for m in METHODS] + ["report"]
  patch = plan[-2].config
  assert (patch.dataset.train_split, patch.dataset.validation_split, patch.dataset.eval_split) == (
      "train+validation+test[fold=0,1,2/5]", "train+validation+test[fold=4/5]", "train+validation+test[fold=3/5]")
  assert patch.dataset.kind == "patches" and (patch.task.patch, patch.task.stride) == (16, 8)
  assert plan[1].config.train.batch_size == 8 and plan[1].config.data.sampling.mode == "balanced"
  assert plan[1].steps == ("train", "select_checkpoint", "eval") and plan[0].fn is not None   # threshold: host step
  p.experiment.cv.folds = ()
  with pytest.raises(ValueError, match="experiment.cv.folds is empty"):
    experiments.stages(p, tmp_path)


@pytest.fixture(scope="module")
def patch_run(tiny_data_dir, tmp_path_factory):
  return run_smoke(physionet_patch_unet, tiny_data_dir, tmp_path_factory.mktemp("patch_unet"))


def test_tables_5_and_6_are_filled_from_the_rounds(patch_run):
  _, root = patch_run
  text = (root / "report.md").read_text()
  t = json.loads((root / "tables.json").read_text())
  for method, label in (("threshold", "Threshold baseline"), ("full_unet", "U-Net, full slices"),
                        ("patch_unet", "U-Net, patches")):
    m = t["methods"][method]
    preds = np.load(root / "fold0" / method / "predictions.npz")
    blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
    assert m["n_slices"] == len(preds["mask"]) and m["n_slices_with_blood"] == blood.sum() > 0
    dice = M.dice(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2))
    assert m["dice_slices_with_blood"] == pytest.approx(dice.mean())
    assert [r["threshold"] for r in m["table6"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
    y, p = preds["labels"][:, 0] > 0.5, preds["probabilities"][:, 0]
    assert m["table6"][2]["sensitivity"] == pytest.approx(((p >= 0.7) & y).sum() / y.sum())
    for stat in ("min", "max", "std", "mean"):
      assert np.isfinite(m["table5"]["dice"][stat]) and np.isfinite(m["table5"]["specificity"][stat])
    assert f"## {label}" in text
  assert "not run" not in text and re.search(r"\| Threshold baseline \(grid search\) \| \d+ \| \d+ \| \d\.\d{3}", text)
  # What each round chose: the thresholds of the grid search and the checkpoint of best validation Jaccard.
  chosen = json.loads((root / "fold0" / "threshold" / "thresholds.json").read_text())
  assert 100 <= chosen["lower"] <= 210 <= chosen["upper"] <= 255
  sel = json.loads((root / "fold0" / "patch_unet" / "selection.json").read_text())
  assert sorted(sel["scores"]) == ["1", "2"] and sel["step"] in (1, 2)
  assert str(sel["step"]) == max(sel["scores"], key=lambda k: (sel["scores"][k], int(k)))  # best, ties: later
  assert f"checkpoint {sel['step']}" in text
  # The evaluation used the selected checkpoint.
  assert json.loads((root / "fold0" / "patch_unet" / "metrics.json").read_text())["step"] == sel["step"]
  # The patch U-Net trained on 16² windows and was evaluated on whole 32² slices, stitched.
  patch_cfg = loop.read_config(root / "fold0" / "patch_unet")
  assert patch_cfg.dataset.kind == "patches" and patch_cfg.task.patch == 16
  assert preds["pred_mask"].shape[1:] == (32, 32)


def test_the_patch_unet_bundle_predicts_by_sliding_window(patch_run, tmp_path):
  """Exported, the patch U-Net keeps its window (manifest), its selected checkpoint, and predicts the held-out
  slices by windows of 16 every 8 pixels, averaged, then closed and opened: what its evaluation wrote."""
  _, root = patch_run
  run = root / "fold0" / "patch_unet"
  cfg = loop.read_config(run)
  out = export.export_bundle(cfg, run, tmp_path / "bundle")
  manifest = bundle_lib.read_manifest(out)
  (entry,) = manifest["members"]
  assert entry["task"]["patch"] == 16 and entry["task"]["stride"] == 8 and entry["data"]["image_size"] == 32
  assert members.window(entry) == {"patch": 16, "stride": 8}
  assert entry["source"]["step"] == evaluate.selected_step(run)
  b = bundle_lib.load(out)
  assert b.describe()[0]["window"] == {"patch": 16, "stride": 8}
  source = pipeline.open_split(cfg.dataset, cfg.dataset.eval_split)
  records = [source[i] for i in range(len(source))]
  images = b.preprocess(records)
  got = b.predict(images, np.zeros(len(records)), batch_size=8)
  want = np.load(run / "predictions.npz")
  np.testing.assert_array_equal(got["pred_mask"], want["pred_mask"])
  np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
  # The same from maps.sliding_window around the bundle's own model, and not what the whole slice gives.
  member = b.members[entry["name"]]
  (x,) = images.values()

  @jax.jit
  def reference(state, x):
    model = nnx.merge(member.graphdef, *state)
    prob = lambda v: jax.nn.sigmoid(member.task.logits(model, v))
    post = lambda m: maps.close_open(m, member.task.closing, member.task.opening)
    return post(maps.sliding_window(prob, x, 16, 8)), post(prob(x))

  stitched, whole = (np.asarray(m) for m in reference(member.state, x[:16]))
  np.testing.assert_array_equal(got["pred_mask"][:16], (stitched[..., 0] >= 0.5).astype(np.uint8))
  np.testing.assert_allclose(got["probabilities"][:16, 0],
                             np.asarray(maps.slice_score(stitched, member.task.slice_min_pixels))[:, 0], rtol=1e-6)
  assert not np.allclose(whole, stitched, atol=1e-3)
