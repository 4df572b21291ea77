"""The segmentation task: targets and its loss on hand-made masks, slice probability = max pixel, and every
segmentation model through the shared trainer and evaluation via configs/segmentation.py:MODEL:smoke (its
losses alone: tests/train/test_losses.py)."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import segmentation as seg_config
from ich_jax.train import segmentation as seg
from ich_jax.train import tasks
from tests.train import masks


def test_targets_any_and_per_subtype():
  mask = np.zeros((1, 4, 4), np.uint8)
  mask[0, 0, 0], mask[0, 1, 1], mask[0, 3, 3] = 1, 3, 5           # epidural, subarachnoid, subdural
  anyt = np.asarray(seg.targets(jnp.asarray(mask), "any"))
  np.testing.assert_array_equal(anyt[..., 0], mask > 0)
  sub = np.asarray(seg.targets(jnp.asarray(mask), "subtypes"))
  assert sub.shape == (1, 4, 4, 5) and sub.sum() == 3
  assert sub[0, 0, 0, 0] == sub[0, 1, 1, 2] == sub[0, 3, 3, 4] == 1


def _fixed(logits):
  return lambda image: logits


def test_slice_probability_is_the_max_pixel_and_pred_mask():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
  logits[1, 5, 2, 0] = 4.0                                      # slice 1's most probable pixel
  image = jnp.zeros((3, 8, 8, 1))
  task = tasks.build(seg_config.get_config("unet:smoke").task)
  out = task.predict(_fixed(jnp.asarray(logits)), {"image": image})
  prob = 1 / (1 + np.exp(-logits[..., 0]))
  np.testing.assert_allclose(out["probabilities"][:, 0], prob.max(axis=(1, 2)), rtol=1e-6)
  assert out["probabilities"][1, 0] == pytest.approx(1 / (1 + np.exp(-4.0)), rel=1e-6)
  # One map: the subtype columns repeat "any" (documented stand-in), never NaN.
  np.testing.assert_array_equal(out["probabilities"], np.repeat(out["probabilities"][:, :1], 6, axis=1))
  np.testing.assert_array_equal(out["pred_mask"], (prob >= 0.5).astype(np.uint8))
  assert out["pred_mask"].dtype == np.uint8

  # Five subtype maps: each column is its map's max pixel, any is the max of all.
  sub = rng.normal(size=(2, 8, 8, 5)).astype(np.float32) - 8  # all pixels well below 0.5 ...
  sub[0, 1, 1, 3] = 2.0                                         # ... but an intraventricular one
  sub[0, 1, 1, 1] = 1.0                                         # intraparenchymal, same pixel, weaker
  task = seg.Segmentation(maps="subtypes")
  out = task.predict(_fixed(jnp.asarray(sub)), {"image": jnp.zeros((2, 8, 8, 1))})
  p = 1 / (1 + np.exp(-sub))
  np.testing.assert_allclose(out["probabilities"][:, 1:], p.max(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(out["probabilities"][:, 0], p.max(axis=(1, 2, 3)), rtol=1e-6)
  # The pixel is labelled with its most probable subtype (LABELS index, as `mask`), nothing else is blood.
  expected = np.zeros((2, 8, 8), np.uint8)
  expected[0, 1, 1] = 4
  np.testing.assert_array_equal(out["pred_mask"], expected)


def test_loss_is_dice_bce_or_their_sum_over_the_subtype_maps():
  mask = np.zeros((2, 8, 8), np.uint8)
  mask[0, 2:5, 2:5] = 5                                           # subdural
  perfect = masks.logits(np.asarray(seg.targets(jnp.asarray(mask), "subtypes")))
  batch = {"image": jnp.zeros((2, 8, 8, 1)), "mask": jnp.asarray(mask)}
  both, m = seg.Segmentation(maps="subtypes", loss="dice+bce").loss(_fixed(perfect), batch)
  assert float(m["dice_loss"]) == pytest.approx(0.0, abs=1e-6) and float(m["bce"]) < 1e-6
  assert float(both) == pytest.approx(float(m["dice_loss"] + m["bce"])) and float(m["hard_dice"]) == pytest.approx(1.0)
  # Everything predicted as intraparenchymal instead: the subdural map misses, the other empty map is wrong.
  wrong = masks.logits(np.asarray(seg.targets(jnp.asarray(np.where(mask > 0, 2, 0).astype(np.uint8)), "subtypes")))
  dice, m = seg.Segmentation(maps="subtypes").loss(_fixed(wrong), batch)
  # Five maps pooled over the batch: three perfect empties, two with 1 − 1 / (9 + 1).
  assert "bce" not in m and float(dice) == pytest.approx(2 * 0.9 / 5, rel=1e-5)


def test_wrong_number_of_maps_is_a_clear_error():
  task = seg.Segmentation(maps="subtypes")
  with pytest.raises(ValueError, match="config.model.num_classes = 5"):
    task.loss(_fixed(jnp.zeros((2, 8, 8, 1))), {"image": jnp.zeros((2, 8, 8, 1)), "mask": jnp.zeros((2, 8, 8), jnp.uint8)})
  with pytest.raises(ValueError, match=re.escape("task.loss='dice+ce'")):
    seg.Segmentation(loss="dice+ce")


@pytest.fixture
def rbg_prng():
  """JAX's "rbg" PRNG for the test: the eager init in loop.Experiment.init_state compiles one
  truncated-normal kernel per weight shape, ~1.5 s each with threefry on these 2-core CPUs and a
  fifth of that with rbg. Which generator draws the initial weights is not under test."""
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", old)


@pytest.mark.parametrize("name", seg_config.MODELS)
def test_trains_and_evaluates_through_the_shared_loop(name, tiny_data_dir, tmp_path, rbg_prng):
  from ich_jax.train import evaluate, loop

  cfg = seg_config.get_config(f"{name}:smoke")
  cfg.dataset.data_dir = tiny_data_dir
  cfg.train.num_steps = 2
  cfg.train.log_every = 1
  cfg.train.checkpoint_every = 2
  cfg.eval.figures = False
  exp, state = loop.train(cfg, tmp_path)
  assert int(state["step"]) == 2
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
  metrics = evaluate.evaluate(cfg, tmp_path, exp=exp, state=state, step=2)
  assert 0 <= metrics["slice"]["any"]["auc"] <= 1
  # The predicted masks reach the report's segmentation section.
  dice = metrics["volumes"]["dice"]["slices_with_blood"]
  assert dice["n_slices"] > 0 and 0 <= dice["dice"] <= 1
  preds = np.load(tmp_path / "predictions.npz")
  assert preds["pred_mask"].shape == preds["mask"].shape == (len(preds["probabilities"]), 32, 32)


def test_stitched_inference_post_processing_and_slice_score():
  from ich_jax.models import maps

  rng = np.random.default_rng(3)
  image = jnp.asarray(rng.normal(size=(2, 24, 24, 1)), jnp.float32)
  # A model whose output depends on where it is in its window: stitching must average the windows.
  def model(x):
    ramp = jnp.arange(x.shape[1], dtype=jnp.float32)[None, :, None, None] / x.shape[1]
    return 4.0 * (x + ramp - 0.5)

  task = seg.Segmentation(loss="bce", patch=8, stride=4, closing=3, opening=2, slice_min_pixels=5)
  out = task.predict(model, {"image": image})
  prob = maps.close_open(maps.sliding_window(lambda x: jax.nn.sigmoid(model(x)), image, 8, 4), 3, 2)
  np.testing.assert_array_equal(out["pred_mask"], (np.asarray(prob)[..., 0] >= 0.5).astype(np.uint8))
  fifth = np.sort(np.asarray(prob).reshape(2, -1), axis=1)[:, -5]
  np.testing.assert_allclose(out["probabilities"], np.repeat(fifth[:, None], 6, axis=1), rtol=1e-6)
  # Not what the whole-slice model gives: the windows are seen.
  whole = seg.Segmentation(loss="bce").predict(model, {"image": image})
  assert not np.array_equal(whole["pred_mask"], out["pred_mask"])
  # The export carries the same post-processed map.
  np.testing.assert_allclose(task.export(model, {"image": image})["maps"], np.asarray(prob)[..., 0], atol=1e-3)
  with pytest.raises(ValueError, match="slice_min_pixels=0"):
    seg.Segmentation(slice_min_pixels=0)


def test_seed_002s_slice_rule_counts_pixels_over_the_slice():
  """The public code's `np.sum(mask) > 20*20` (configs/physionet_patch_unet.py: slice_min_pixels 401 on 512²):
  two separate regions of 200 and 201 blood pixels make a positive slice, 400 pixels do not."""
  logits = np.full((2, 64, 64, 1), -6.0, np.float32)
  logits[:, 0:10, 0:20] = logits[:, 30:40, 30:50] = 6.0           # 200 + 200 pixels, far apart
  logits[0, 40, 30] = 6.0                                         # slice 0: one more, 401 in all
  task = seg.Segmentation(loss="bce", slice_min_pixels=401)
  out = task.predict(_fixed(jnp.asarray(logits)), {"image": jnp.zeros((2, 64, 64, 1))})
  assert out["pred_mask"].reshape(2, -1).sum(1).tolist() == [401, 400]
  assert (np.asarray(out["probabilities"][:, 0]) >= 0.5).tolist() == [True, False]


def test_the_target_can_be_the_brain_mask():
  task = seg.Segmentation(target="brain_mask", loss="dice")
  assert task.batch_keys == ("image", "brain_mask")
  brain = masks.square()[None].astype(np.uint8)
  batch = {"image": jnp.zeros((1, 8, 8, 1)), "brain_mask": jnp.asarray(brain), "mask": jnp.zeros((1, 8, 8), jnp.uint8)}
  loss, _ = task.loss(_fixed(masks.logits(brain[..., None])), batch)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)               # perfect on the brain, whatever `mask` says
  with pytest.raises(ValueError, match="task.target='skull'"):
    seg.Segmentation(target="skull")
