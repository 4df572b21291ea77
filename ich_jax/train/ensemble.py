"""The ensemble task: seed 000's weight model over frozen base segmentation maps (§2.2.3–2.2.4, Fig. 3).

Batches come from `ich_jax.data.base_maps` (`config.dataset.kind =
"base_maps"`): `maps` [B, H, W, N], the N base models' blood probabilities,
beside the slice's `image` and reference `mask`. The weight model
(`ensemble_weights`) reads the maps — and the image channels after them with
`with_image` — and gives one weight per base model per slice; the pure
`ich_jax.models.ensemble.combine` forms the weighted map Σ_n w_n · map_n.

Loss. Seed 000 trains the weight model to minimise "the Dice loss between the
predicted segmentation at the pixel probability threshold of 0.5 and
ground-truth segmentation". A thresholded map is piecewise constant in the
weights: its gradient is zero almost everywhere, so that loss cannot be
trained by gradient descent as written. We train on the soft Dice of the
weighted probability map (the segmentation task's Dice: smoothing,
`dice_over`, `dice_ignore_empty` as there; `ich_jax.train.segmentation`) and
report the paper's quantity, the Dice of the map thresholded at `threshold`:
`hard_dice` while training, the report's Dice from `pred_mask` at evaluation.

Predictions (what evaluation and the report read), as the segmentation task's
with one map: `probabilities` [B, 6], every column the combined map's most
probable pixel (seed 000 §2.2.4, max[HemorrhageSlice]; the report takes a
scan's as its most probable slice); `pred_mask` [B, H, W] uint8, 1 where the
combined map reaches `threshold`; and `ensemble_weights` [B, N], which base
model the weight model trusted on each slice (kept in predictions.npz).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ich_jax.models.ensemble import combine
from ich_jax.train import losses, tasks
from ich_jax.train import segmentation as seg


@tasks.register("ensemble")
class Ensemble(tasks.Task):
  """Base maps [B, H, W, N] (+ image) → weights [B, N] → weighted map; soft Dice against the mask."""

  # The image always travels as an input, read only `with_image`: a field that
  # is not an input is gathered by evaluation as per-slice metadata.
  input_keys = ("maps", "image")
  target_keys = ("mask",)

  def __init__(self, with_image: bool = False, dice_over: str = "batch", dice_smooth: float = 1.0,
               dice_ignore_empty: bool = False, threshold: float = 0.5):
    if dice_over not in losses.DICE_OVER:
      raise ValueError(f"config task.dice_over={dice_over!r}; expected one of {tuple(losses.DICE_OVER)}")
    self.with_image = bool(with_image)
    self.dice_over = dice_over
    self.dice_smooth = float(dice_smooth)
    self.dice_ignore_empty = bool(dice_ignore_empty)
    # Seed 000 §2.2.3: pixel probability threshold 0.5.
    self.threshold = float(threshold)

  def combined(self, model, batch) -> tuple[jax.Array, jax.Array]:
    """(weighted map [B, H, W], weights [B, N])."""
    maps = batch["maps"].astype(jnp.float32)
    x = jnp.concatenate([maps, batch["image"].astype(jnp.float32)], axis=-1) if self.with_image else maps
    weights = model(x).astype(jnp.float32)
    if weights.shape != maps.shape[:1] + maps.shape[-1:]:
      raise ValueError(f"ensemble task: weights {weights.shape} for maps {maps.shape}; the weight model needs one "
                       f"output per base model (config model.options.num_models = {maps.shape[-1]}, the number "
                       "of dataset.exports)")
    return combine(maps, weights).map, weights

  def loss(self, model, batch):
    prob, weights = self.combined(model, batch)
    prob = prob[..., None]
    target = seg.targets(batch["mask"], "any")
    loss = losses.soft_dice_loss(prob, target, over=self.dice_over, smooth=self.dice_smooth,
                                 ignore_empty=self.dice_ignore_empty)
    # The paper's Dice (thresholded, pooled over the batch): a progress readout, not a report number.
    hard = (prob >= self.threshold).astype(jnp.float32)
    metrics = {"loss": loss, "hard_dice": losses.soft_dice(hard, target, None, 1e-6)}
    for n in range(weights.shape[-1]):
      metrics[f"weight_{n}"] = weights[:, n].mean()
    return loss, metrics

  def predict(self, model, batch) -> dict[str, Any]:
    prob, weights = self.combined(model, batch)
    return {"probabilities": seg.slice_probabilities(prob[..., None], "any"),
            "pred_mask": seg.predicted_mask(prob[..., None], "any", self.threshold),
            "ensemble_weights": weights}
