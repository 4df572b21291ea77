"""The losses the tasks train with: class-weighted BCE, pixel BCE, soft Dice, and the saliency loss.

One module for every task (classification, segmentation, sequence, ensemble), so that a task borrowing
another's loss (the classifier's Dice mask loss) imports it from here rather than from that task.

What Dice's `over` ("batch" or "slice") and `ignore_empty` mean for a target without blood: the segmentation
task's `dice_over` and `dice_ignore_empty` (ich_jax.train.segmentation, "Empty").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

DICE_OVER = {"batch": (0, 1, 2), "slice": (1, 2)}


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-example class-weighted binary cross-entropy, normalised by the weight sum.

  This is the RSNA 2019 challenge metric's form (seed 003 paper, §2 eq. 1): a
  weighted mean over the six columns of the per-column log-loss.
  """
  per_class = optax.sigmoid_binary_cross_entropy(logits, labels)
  return (per_class * weights).sum(-1) / weights.sum()


def soft_dice(prob: jax.Array, target: jax.Array, axis, smooth: float) -> jax.Array:
  """(2 Σ p·t + smooth) / (Σ p + Σ t + smooth) over `axis`: 1 at perfect overlap, → 0 when disjoint."""
  inter = (prob * target).sum(axis)
  return (2 * inter + smooth) / (prob.sum(axis) + target.sum(axis) + smooth)


def dice_loss(logits: jax.Array, target: jax.Array, *, over: str = "batch", smooth: float = 1.0,
              ignore_empty: bool = False) -> jax.Array:
  """Mean of 1 − soft Dice of sigmoid(logits) [B, H, W, K] against target [B, H, W, K] (`over`, `ignore_empty`:
  see the module doc)."""
  return soft_dice_loss(jax.nn.sigmoid(logits), target, over=over, smooth=smooth, ignore_empty=ignore_empty)


def soft_dice_loss(prob: jax.Array, target: jax.Array, *, over: str = "batch", smooth: float = 1.0,
                   ignore_empty: bool = False) -> jax.Array:
  """`dice_loss` of probabilities [B, H, W, K] (a map that is no sigmoid's output: the ensemble's weighted map)."""
  axis = DICE_OVER[over]
  loss = 1.0 - soft_dice(prob, target, axis, smooth)
  if not ignore_empty:
    return loss.mean()
  scored = target.sum(axis) > 0
  return jnp.where(scored, loss, 0.0).sum() / jnp.maximum(scored.sum(), 1)


def bce_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Per-pixel sigmoid binary cross-entropy, averaged over pixels and maps (Keras `binary_crossentropy`)."""
  return optax.sigmoid_binary_cross_entropy(logits, target).mean()


def saliency_loss(cam: jax.Array, target: jax.Array, *, ignore_empty: bool = True, eps: float = 1e-6) -> jax.Array:
  """Soft Dice loss between max-normalised CAMs [B, h, w] and binary targets [B, h, w] (seed 000 §2.1.5).

  Seed 000 compares "the saliency map from the last convolutional layer" with
  the hemorrhage mask but names neither the loss nor the normalisation. Here:
  the CAM divided by its maximum (so only where it points matters, not its
  scale), soft Dice against the mask at CAM resolution — Dice because seed 000
  trains its segmentation models with Dice loss.

  Empty targets (slices without blood): with `ignore_empty` (default) they are
  left out of the mean — a CAM has no right answer where the class is absent,
  and a max-normalised CAM cannot be empty — and a batch without any blood gives
  0. With `ignore_empty=False` they count, with loss ≈ 1 unless the CAM is all zero.
  """
  if cam.shape != target.shape:
    raise ValueError(f"saliency_loss: CAM {cam.shape} and target {target.shape} differ; "
                     "bring the mask to the CAM grid first (e.g. train.tasks.coarse_mask)")
  cam = cam.astype(jnp.float32)
  target = (target > 0).astype(jnp.float32)
  p = cam / (cam.max(axis=(1, 2), keepdims=True) + eps)
  dice = (2 * (p * target).sum((1, 2)) + eps) / (p.sum((1, 2)) + target.sum((1, 2)) + eps)
  per_example = 1.0 - dice
  if not ignore_empty:
    return per_example.mean()
  present = target.sum((1, 2)) > 0
  return jnp.where(present, per_example, 0.0).sum() / jnp.maximum(present.sum(), 1)
