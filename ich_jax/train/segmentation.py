"""The segmentation task: per-pixel blood maps, Dice and/or BCE, slice probabilities from the maps.

Seed 000 (§2.2.2) trains its Inception U-Nets with a Dice loss; seed 002 (§6)
its U-Net with cross-entropy. Either, or their sum, is `loss`.

Maps (`maps`). "any" (default): one map, blood of any subtype (mask > 0) —
the target of seed 002 and of seed 000's base models; build the model with
`config.model.num_classes = 1`. "subtypes": five maps in `LABELS[1:]` order,
map k-1 = (mask == k), `num_classes = 5`. Every map is its own sigmoid
(multi-label, as the slice labels are), so the loss is the mean over maps.

Predictions (what `ich_jax.train.evaluate` and the report read):
  probabilities [B, 6] in LABELS order. A map's slice probability is its most
    probable pixel (seed 000 §2.2.4, "max[HemorrhageSlice]"); the report takes
    the scan's as the max over its slices. With "subtypes", "any" is the most
    probable pixel of all five maps (their pixelwise max is the any-blood map),
    so any ≥ each subtype, as for the labels. With "any" the model says
    nothing about subtypes, and the five subtype columns repeat the
    any-probability: a NaN-free stand-in that the report scores like real
    columns, so its subtype AUCs there measure how well "blood" ranks the
    slices of each subtype, not subtype discrimination.
  pred_mask [B, H, W] uint8, shaped like `mask`: 0 where no map reaches
    `threshold`; else the LABELS index of the most probable subtype with
    "subtypes" (the `mask` convention), 1 with "any" (blood of unknown
    subtype: read it as non-zero, as the report's Dice and volumes do).
    Probability maps are not returned: evaluation gathers every output of the
    split in host memory, and a float map per slice is 4× `mask` per map.

Inference (`predict`, `export`). With `patch` > 0 the model sees windows of
`patch` pixels every `stride` and the map is their average where they overlap
(seed 002's patch U-Net; `ich_jax.models.maps.sliding_window`); 0 runs it on
the whole slice. `closing` / `opening` > 1 post-process the map with seed
002's closing then opening (square sizes in pixels; `maps.close_open`, on the
probabilities, so thresholds 0.5–0.9 all see the paper's binary morphology).
`slice_min_pixels` = k makes a slice's probability its k-th most probable
pixel, so that it reaches a threshold exactly when k pixels of the
post-processed map do (1: the maximum, seed 000; seed 002's public code calls a
slice positive when its mask has more than 20 × 20 = 400 pixels, counted
anywhere on the slice, not one connected region: k = 401 on its 512² slices,
configs/physionet_patch_unet.py).

Target (`target`): the batch field holding the reference label map, `mask`
(hemorrhage) by default, or `brain_mask` (the pipeline's skull-stripping mask,
`config.data.brain_mask = True`) to train a skull-stripping U-Net.

Export (`--mode export_features`, `export`): the slice probabilities and the
any-blood map of every slice, float16, the frozen base-model outputs that
seed 000's weight model reads (`ich_jax.data.base_maps`, `ich_jax.train.ensemble`).

Empty (Dice where the target has no blood). `dice_ignore_empty=False`
(default) scores an empty target with the smoothed soft Dice, which is 1 (loss
0) only when the prediction is empty too — `metrics.dice(..., empty=1.0)` in the
limit, so normal slices teach the model to say "no blood". True leaves such
terms out of the mean (MONAI's `ignore_empty`; `metrics.dice`'s default
`empty=NaN`, "not scored", as seed 002 scores only slices with blood). Which
terms exist depends on `dice_over`: "batch" pools all pixels of the batch per
map (the Keras `dice_coef` idiom, which flattens the batch; a term is empty
only when no slice of the batch has that blood) or "slice", one Dice per slice
and map.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ich_jax import LABELS
from ich_jax.models import maps as maps_lib
from ich_jax.train import losses, tasks

MAPS = {"any": 1, "subtypes": len(LABELS) - 1}
LOSSES = ("dice", "bce", "dice+bce")


def targets(mask: jax.Array, maps: str) -> jax.Array:
  """Label map [B, H, W] (0, or the LABELS index of the subtype) → float targets [B, H, W, K]."""
  if maps == "any":
    return (mask > 0)[..., None].astype(jnp.float32)
  return (mask[..., None] == jnp.arange(1, len(LABELS), dtype=mask.dtype)).astype(jnp.float32)


def slice_probabilities(prob: jax.Array, maps: str, min_pixels: int = 1) -> jax.Array:
  """Per-pixel probabilities [B, H, W, K] → [B, 6] in LABELS order (max pixel per map, or the
  `min_pixels`-th largest; see the module doc)."""
  per_map = maps_lib.slice_score(prob, min_pixels)
  if maps == "any":
    return jnp.repeat(per_map, len(LABELS), axis=1)
  blood = maps_lib.slice_score(prob.max(axis=-1, keepdims=True), min_pixels)
  return jnp.concatenate([blood, per_map], axis=1)


def predicted_mask(prob: jax.Array, maps: str, threshold: float) -> jax.Array:
  """[B, H, W, K] → uint8 [B, H, W]: 0 below `threshold`, else 1 ("any") or the subtype's LABELS index."""
  best = prob.max(axis=-1)
  label = jnp.ones_like(best, jnp.uint8) if maps == "any" else (prob.argmax(axis=-1) + 1).astype(jnp.uint8)
  return jnp.where(best >= threshold, label, jnp.uint8(0))


@tasks.register("segmentation")
class Segmentation(tasks.Task):
  """Slice [B, H, W, C] → per-pixel logits [B, H, W, K]; Dice and/or BCE against the mask."""

  target_keys = ("mask",)
  TARGETS = ("mask", "brain_mask")

  def __init__(self, loss: str = "dice", maps: str = "any", dice_over: str = "batch", dice_smooth: float = 1.0,
               dice_ignore_empty: bool = False, threshold: float = 0.5, target: str = "mask", patch: int = 0,
               stride: int = 0, closing: int = 0, opening: int = 0, slice_min_pixels: int = 1,
               max_patches: int = 0):
    if loss not in LOSSES:
      raise ValueError(f"config task.loss={loss!r}; expected one of {LOSSES}")
    if maps not in MAPS:
      raise ValueError(f"config task.maps={maps!r}; expected one of {tuple(MAPS)}")
    if dice_over not in losses.DICE_OVER:
      raise ValueError(f"config task.dice_over={dice_over!r}; expected one of {tuple(losses.DICE_OVER)}")
    self.loss_name = loss
    self.maps = maps
    self.dice_over = dice_over
    # Smoothing 1 as in the Keras Dice of the seeds' era: a whole empty batch
    # then costs Σp / (Σp + 1), a gentle push towards "no blood".
    self.dice_smooth = float(dice_smooth)
    self.dice_ignore_empty = bool(dice_ignore_empty)
    # Seed 000 §2.2.3 thresholds pixel probabilities at 0.5; seed 002 Table 6 sweeps 0.5–0.9.
    self.threshold = float(threshold)
    if target not in self.TARGETS:
      raise ValueError(f"config task.target={target!r}; expected one of {self.TARGETS}")
    if target == "brain_mask" and maps != "any":
      raise ValueError("config task.target='brain_mask' is one map: set task.maps='any'")
    self.target = target
    self.target_keys = (target,)
    self.patch, self.stride = int(patch), int(stride) or int(patch) // 2
    self.max_patches = int(max_patches) or None
    if self.patch < 0 or (self.patch and self.stride < 1):
      raise ValueError(f"config task.patch={patch}, task.stride={stride}: need patch >= 0 and stride >= 1")
    self.closing, self.opening = int(closing), int(opening)
    self.slice_min_pixels = int(slice_min_pixels)
    if self.slice_min_pixels < 1:
      raise ValueError(f"config task.slice_min_pixels={slice_min_pixels}: need >= 1")

  def logits(self, model, image: jax.Array) -> jax.Array:
    out = model(image).astype(jnp.float32)
    want = MAPS[self.maps]
    if out.ndim != 4 or out.shape[:3] != image.shape[:3] or out.shape[-1] != want:
      raise ValueError(f"segmentation task: model output {out.shape} for input {image.shape}; task.maps="
                       f"{self.maps!r} needs [B, H, W, {want}] (set config.model.num_classes = {want})")
    return out

  def probability_maps(self, model, image: jax.Array) -> jax.Array:
    """[B, H, W, K] probabilities of whole slices: the model on the slice, or averaged windows (`patch`),
    then the closing/opening post-processing."""
    if self.patch:
      prob = maps_lib.sliding_window(lambda x: jax.nn.sigmoid(self.logits(model, x)), image, self.patch,
                                     self.stride, max_patches=self.max_patches)
    else:
      prob = jax.nn.sigmoid(self.logits(model, image))
    return maps_lib.close_open(prob, self.closing, self.opening)

  def loss(self, model, batch):
    logits = self.logits(model, batch["image"])
    target = targets(batch[self.target], self.maps)
    metrics, loss = {}, 0.0
    if "dice" in self.loss_name:
      metrics["dice_loss"] = losses.dice_loss(logits, target, over=self.dice_over, smooth=self.dice_smooth,
                                              ignore_empty=self.dice_ignore_empty)
      loss = loss + metrics["dice_loss"]
    if "bce" in self.loss_name:
      metrics["bce"] = losses.bce_loss(logits, target)
      loss = loss + metrics["bce"]
    # Thresholded Dice of the batch, pooled (a progress readout, not a report number).
    hard = (jax.nn.sigmoid(logits) >= self.threshold).astype(jnp.float32)
    metrics["hard_dice"] = losses.soft_dice(hard, target, None, 1e-6)
    metrics["loss"] = loss
    return loss, metrics

  def predict(self, model, batch) -> dict[str, Any]:
    prob = self.probability_maps(model, batch["image"])
    return {"probabilities": slice_probabilities(prob, self.maps, self.slice_min_pixels),
            "pred_mask": predicted_mask(prob, self.maps, self.threshold)}

  def export(self, model, batch) -> dict[str, Any]:
    """Slice probabilities and the blood map [B, H, W] float16: a frozen base model for the ensemble.

    The map is the any-blood probability (with "subtypes" the pixelwise max of
    the five maps), the input seed 000 §2.2.3 gives its weight model; float16
    halves what the export gathers and stores (`ich_jax.data.stage_exports`).
    """
    prob = self.probability_maps(model, batch["image"])
    return {"probabilities": slice_probabilities(prob, self.maps, self.slice_min_pixels),
            "maps": prob.max(axis=-1).astype(jnp.float16)}
