"""Seed 002, smoke variant, end to end through the stage runner: per-fold rounds, the threshold baseline,
selection by validation during training, Tables 5 and 6 by the public code's slice rule; and the patch U-Net
exported as a bundle that predicts by sliding window. The config's slice rules and chronic-ICH exclusion."""
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
from ich_jax.data import datasets, pipeline
from ich_jax.eval import metrics as M
from ich_jax.experiments.physionet_patch_unet import METHODS
from ich_jax.models import maps
from ich_jax.eval import segmentation_tables as T
from ich_jax.train import checkpoint, evaluate, loop, selection
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
    # The public code's slice rule: a reference slice has blood from 2 mask pixels on, a predicted one from
    # task.slice_min_pixels (2 on the smoke's 32² slices) pixels at the threshold; the baseline's too.
    y, p = (preds["mask"] > 0).sum((1, 2)) >= 2, preds["probabilities"][:, 0]
    assert m["table6"][2]["sensitivity"] == pytest.approx(((p >= 0.7) & y).sum() / y.sum())
    np.testing.assert_array_equal(p >= 0.5, (preds["pred_mask"] > 0).sum((1, 2)) >= 2)
    for stat in ("min", "max", "std", "mean"):
      assert np.isfinite(m["table5"]["dice"][stat]) and np.isfinite(m["table5"]["specificity"][stat])
    assert f"## {label}" in text
  assert "not run" not in text and re.search(r"\| Threshold baseline \(grid search\) \| \d+ \| \d+ \| \d\.\d{3}", text)
  # What each round chose: the thresholds of the grid search and the checkpoint of best validation Jaccard.
  chosen = json.loads((root / "fold0" / "threshold" / "thresholds.json").read_text())
  assert 100 <= chosen["lower"] <= 210 <= chosen["upper"] <= 255
  assert t["slice_rule"] == {"min_pixels": 2, "reference_min_pixels": 2} and "from at least 2 pixels" in text
  run = root / "fold0" / "patch_unet"
  sel = json.loads((run / "selection.json").read_text())
  # Validated after every step while training, though only step 2 was checkpointed to resume.
  assert sorted(sel["scores"]) == ["1", "2"] and sel["step"] in (1, 2) and sel["checked"] == "every 1 steps"
  assert loop.checkpoint_steps(loop.read_config(run), run) == [2]
  assert str(sel["step"]) == max(sel["scores"], key=lambda k: (sel["scores"][k], int(k)))  # best, ties: later
  best = checkpoint.Checkpointer(run / selection.BEST_CHECKPOINTS, keep=None)
  assert best.all_steps == [sel["step"]]
  best.close()
  assert f"checkpoint {sel['step']}" in text
  # The evaluation used the selected checkpoint, whose validation Jaccard is the recorded one.
  assert json.loads((run / "metrics.json").read_text())["step"] == sel["step"]
  cfg = loop.read_config(run)
  exp, state, _ = loop.restore_for_eval(cfg, run, sel["step"])
  validation = pipeline.open_split(cfg.dataset, cfg.dataset.validation_split)
  assert evaluate.validation_jaccard(exp, state, validation, batch_size=8) == pytest.approx(
      sel["scores"][str(sel["step"])], nan_ok=True)
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


def test_the_slice_rules_and_the_chronic_exclusion_of_the_config(tmp_path):
  """The public code's "more than 20 × 20 pixels" on 512² slices, scaled by area; the reference's 2 pixels
  (0/255 masks summed), or its own 401 (`reference_area`), or any pixel on both sides (`any_pixel`); the
  chronic-ICH subject left out on PhysioNet (seed 002 §3) by a builder config of its own."""
  real = physionet_patch_unet.get_config("physionet")
  assert (real.task.slice_min_pixels, real.eval.slice_reference_min_pixels) == (401, 2)
  assert physionet_patch_unet.get_config("").task.slice_min_pixels == 26        # 128²: 400 / 16 = 25, more
  assert physionet_patch_unet.get_config("physionet:reference_area").eval.slice_reference_min_pixels == 401
  anyp = physionet_patch_unet.get_config("physionet:any_pixel")
  assert (anyp.task.slice_min_pixels, anyp.eval.slice_reference_min_pixels) == (1, 0)
  real.dataset.data_dir = str(tmp_path)
  b = datasets.builder(real.dataset)
  assert b.builder_config.name == "slices_exclude_chronic" and b.builder_config.exclude_chronic
  assert b.builder_config.level == "slice" and "slices_exclude_chronic" in str(b.data_dir)
  real.dataset.exclude_chronic = False
  assert datasets.builder(real.dataset).builder_config.name == "slices"
  phantoms = physionet_patch_unet.get_config("smoke")
  phantoms.dataset.exclude_chronic = True
  with pytest.raises(ValueError, match="dataset.exclude_chronic=True: dataset synthetic_ich/tiny has no"):
    datasets.builder(phantoms.dataset)
  # The reference rule in the tables: slice 1's mask has one blood pixel, its label says blood.
  mask = np.zeros((3, 8, 8), np.uint8)
  mask[0, :2, :2], mask[1, 0, 0] = 1, 1
  preds = {"mask": mask, "pred_mask": mask, "labels": np.array([[1] * 6, [1] * 6, [0] * 6], np.float32),
           "probabilities": np.array([[0.9] * 6, [0.2] * 6, [0.1] * 6]), "study_id": np.array(["a", "a", "b"])}
  assert T.method_metrics(preds)["pooled"]["sensitivity"] == pytest.approx(0.5)
  assert T.method_metrics(preds, reference_min_pixels=2)["pooled"]["sensitivity"] == pytest.approx(1.0)
  assert T.method_metrics(preds, reference_min_pixels=2)["pooled"]["specificity"] == pytest.approx(1.0)
  # From 5 pixels on no slice has blood, and slice 0's prediction becomes a false positive.
  assert T.method_metrics(preds, reference_min_pixels=5)["pooled"]["specificity"] == pytest.approx(2 / 3)
