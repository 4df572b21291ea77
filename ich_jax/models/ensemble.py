"""Seed 000's weighted ensemble (§2.2.3–2.2.4, Fig. 3): a weight model and the post-processing that uses it.

The weight model reads the five base U-Nets' probability maps of a slice
(optionally beside the image) and outputs one weight per base model; `combine`
forms the weighted map, scores each slice by its most probable pixel and each
case by its most probable slice. The paper trains the weight model with a Dice
loss on the combined map thresholded at 0.5 (that loss belongs to the task).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register
from ich_jax.models.small_cnn import SmallCNN


@register("ensemble_weights")
class EnsembleWeights(nnx.Module):
  """[B, H, W, in_channels] (the base models' maps first, then any image channels) → weights [B, num_models].

  `num_models` is the number of base-model maps (default: every input channel
  is a map; seed 000 uses five). The network is the project's small CNN
  classifier with `num_models` outputs: seed 000 gives the weight model's
  inputs and outputs but not its layers (Supplementary Fig. S4 is not in our
  copy). The weights are a softmax over the base models, so the weighted map
  stays a probability map that the paper's 0.5 threshold applies to.
  `num_classes` is accepted for the registry's protocol and unused: the output
  is one weight per base model, not class logits.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, num_models: int | None = None,
               widths: Sequence[int] = (16, 32, 64, 64), dtype=None):
    del num_classes
    self.num_models = in_channels if num_models is None else int(num_models)
    if not 1 <= self.num_models <= in_channels:
      raise ValueError(f"ensemble_weights: num_models={self.num_models} must be between 1 and "
                       f"in_channels={in_channels} (maps first, then image channels)")
    self.net = SmallCNN(num_classes=self.num_models, in_channels=in_channels, widths=widths, stem="strided",
                        rngs=rngs, dtype=dtype)

  def __call__(self, x):
    return jax.nn.softmax(self.net(x).astype(jnp.float32), axis=-1)


class Combined(NamedTuple):
  map: jax.Array    # [..., S, H, W] weighted probability map
  slice: jax.Array  # [..., S] max pixel of each slice
  case: jax.Array   # [...] max valid slice


def combine(maps: jax.Array, weights: jax.Array, valid: jax.Array | None = None) -> Combined:
  """Seed 000 §2.2.4: Hemorrhage = Σ_i SegOut_i · WeightOut_i; slice = max pixel; case = max slice.

  maps [..., S, H, W, M] base-model probabilities, weights [..., S, M] per
  slice, valid [..., S] (True at real slices; padding is ignored). A case with
  no valid slice has probability 0.
  """
  weighted = jnp.einsum("...hwm,...m->...hw", maps, weights)
  per_slice = weighted.max(axis=(-2, -1))
  if valid is None:
    valid = jnp.ones(per_slice.shape, bool)
  per_slice = jnp.where(valid, per_slice, 0.0)
  case = jnp.where(valid, per_slice, -jnp.inf).max(axis=-1)
  return Combined(weighted, per_slice, jnp.where(valid.any(axis=-1), case, 0.0))
