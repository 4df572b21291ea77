"""The training losses: the RSNA weighted BCE, Dice and BCE on hand-made masks and what empty means, and the
saliency loss of a CAM against a mask."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ich_jax.train import losses
from tests.train import masks


def test_weighted_bce_is_the_rsna_metric():
  from ich_jax.eval import metrics as M

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 6)).astype(np.float32)
  labels = rng.integers(0, 2, (5, 6)).astype(np.float32)
  loss = losses.weighted_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.array([2.0, 1, 1, 1, 1, 1])).mean()
  prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
  assert float(loss) == pytest.approx(M.weighted_log_loss(labels, prob), rel=1e-5)


def test_dice_loss_perfect_disjoint_and_partial():
  t = masks.square()[None, :, :, None]                               # 9 blood pixels
  assert float(losses.dice_loss(masks.logits(t), jnp.asarray(t))) == pytest.approx(0.0, abs=1e-6)
  disjoint = np.zeros_like(t)
  disjoint[0, 6:8, 6:8, 0] = 1                                  # 4 pixels, no overlap
  # 1 − (0 + 1) / (4 + 9 + 1): the smoothing term is all that keeps it below 1.
  assert float(losses.dice_loss(masks.logits(disjoint), jnp.asarray(t))) == pytest.approx(1 - 1 / 14, rel=1e-6)
  half = np.zeros_like(t)
  half[0, 2:5, 2:4, 0] = 1                                      # 6 of the 9 pixels
  assert float(losses.dice_loss(masks.logits(half), jnp.asarray(t))) == pytest.approx(1 - 13 / 16, rel=1e-6)
  # Soft probabilities enter linearly: p = 0.5 everywhere on 64 pixels.
  soft = losses.dice_loss(jnp.zeros_like(jnp.asarray(t)), jnp.asarray(t))
  assert float(soft) == pytest.approx(1 - (2 * 4.5 + 1) / (32 + 9 + 1), rel=1e-6)


def test_dice_over_slices_or_batch_and_what_empty_means():
  blood = masks.square()
  t = jnp.asarray(np.stack([blood, np.zeros_like(blood)])[..., None])
  false_pos = np.stack([blood, masks.square(lo=0, hi=1)])[..., None]  # slice 2: 1 pixel where there is no blood
  pred = masks.logits(false_pos)
  # Per slice: perfect (0) and an empty slice with one false pixel: 1 − 1 / (1 + 0 + 1).
  assert float(losses.dice_loss(pred, t, over="slice")) == pytest.approx((0 + 0.5) / 2, rel=1e-6)
  # Ignoring empty targets (metrics.dice's empty=NaN): only the blood slice is scored.
  assert float(losses.dice_loss(pred, t, over="slice", ignore_empty=True)) == pytest.approx(0.0, abs=1e-6)
  # Pooled over the batch: 1 − (18 + 1) / (10 + 9 + 1).
  assert float(losses.dice_loss(pred, t, over="batch")) == pytest.approx(1 - 19 / 20, rel=1e-6)
  # An empty target predicted empty is perfect agreement (metrics.dice(..., empty=1.0) in the limit).
  empty = jnp.zeros((1, 8, 8, 1))
  nothing = masks.logits(np.zeros((1, 8, 8, 1)))
  assert float(losses.dice_loss(nothing, empty, over="slice")) == pytest.approx(0.0, abs=1e-6)


def test_bce_matches_optax_and_the_definition():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32) * 3
  t = (rng.random((2, 8, 8, 1)) > 0.8).astype(np.float32)
  got = float(losses.bce_loss(jnp.asarray(logits), jnp.asarray(t)))
  assert got == pytest.approx(float(optax.sigmoid_binary_cross_entropy(logits, t).mean()), rel=1e-6)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  assert got == pytest.approx(float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()), rel=1e-5)


def test_saliency_loss_prefers_the_cam_that_matches_the_mask():
  target = np.zeros((3, 8, 8), np.float32)
  target[0, 2:4, 2:4] = 1
  target[1, 5:7, 1:3] = 1                         # sample 2: no blood
  match = target * 5.0 + 0.01
  mismatch = np.roll(target, 4, axis=2) * 5.0 + 0.01
  good = float(losses.saliency_loss(jnp.asarray(match), jnp.asarray(target)))
  bad = float(losses.saliency_loss(jnp.asarray(mismatch), jnp.asarray(target)))
  assert good < 0.1 and bad > 0.9
  # Scale-free: only where the CAM points matters.
  assert float(losses.saliency_loss(jnp.asarray(match * 100), jnp.asarray(target))) == pytest.approx(good, abs=1e-4)
  # Empty targets are left out by default; counted, a non-zero CAM there costs ≈ 1.
  assert float(losses.saliency_loss(jnp.asarray(match[2:]), jnp.asarray(target[2:]))) == 0.0
  counted = float(losses.saliency_loss(jnp.asarray(match), jnp.asarray(target), ignore_empty=False))
  assert counted == pytest.approx((2 * good + 1.0) / 3, abs=1e-3)
  with pytest.raises(ValueError, match=r"CAM \(3, 8, 8\) and target \(3, 4, 4\)"):
    losses.saliency_loss(jnp.asarray(match), jnp.asarray(target[:, :4, :4]))
