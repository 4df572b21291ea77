"""A small 2D CNN slice classifier: the quickstart's model, CPU-trainable in minutes."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register


class ConvBlock(nnx.Module):
  """conv3x3 → BatchNorm → ReLU, optionally strided."""

  def __init__(self, cin: int, cout: int, *, stride: int, rngs: nnx.Rngs, dtype=None):
    self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = nnx.BatchNorm(cout, momentum=0.9, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.norm(self.conv(x)))


@register("small_cnn")
class SmallCNN(nnx.Module):
  """Stages of (strided conv, conv); global average and max pooling; a linear head.

  Max pooling sits beside average pooling because a bleed can be a handful of
  pixels on a 128×128 slice: averaging alone dilutes a punctate signal.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs,
               widths: Sequence[int] = (16, 32, 64, 96), stem: str = "space_to_depth", stem_factor: int = 2,
               dtype=None):
    # stem "space_to_depth": 2×2 pixel blocks become channels, so the first stage
    # runs at half resolution without discarding pixels (a strided 3×3 conv sees
    # each pixel once at best; a punctate bleed can be one pixel). "strided": a
    # stride-2 conv. `stem_factor` is the block size (4 runs a 256² input at 64²).
    if stem not in ("space_to_depth", "strided"):
      raise ValueError(f"small_cnn: stem={stem!r}; expected 'space_to_depth' or 'strided'")
    self.stem = stem
    self.stem_factor = int(stem_factor) if stem == "space_to_depth" else 2
    blocks = []
    cin = in_channels * self.stem_factor ** 2 if stem == "space_to_depth" else in_channels
    for i, width in enumerate(widths):
      first_stride = 1 if stem == "space_to_depth" else 2
      blocks.append(ConvBlock(cin, width, stride=first_stride if i == 0 else 2, rngs=rngs, dtype=dtype))
      blocks.append(ConvBlock(width, width, stride=1, rngs=rngs, dtype=dtype))
      cin = width
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(2 * cin, num_classes, dtype=dtype, rngs=rngs)
    # Per-cell blood logit on the last feature map: what a strong-label loss
    # (seed 000 §2.1.5, supervision by masks) trains; unused with slice labels only.
    self.mask_head = nnx.Conv(cin, 1, (1, 1), dtype=dtype, rngs=rngs)
    self.num_features = 2 * cin

  def features_map(self, x):
    """Last convolutional feature map [B, h, w, C] (Grad-CAM, saliency loss)."""
    if self.stem == "space_to_depth":
      b, h, w, c = x.shape
      k = self.stem_factor
      if h % k or w % k:
        raise ValueError(f"small_cnn space_to_depth stem needs height and width divisible by {k}, got {h}×{w}")
      x = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // k, w // k, k * k * c)
    for block in self.blocks:
      x = block(x)
    return x

  def pooled(self, fmap):
    return jnp.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=-1)

  def classify(self, fmap):
    return self.head(self.pooled(fmap))

  def mask_logits(self, fmap):
    """[B, h, w] blood logits at feature-map resolution."""
    return self.mask_head(fmap)[..., 0]

  def __call__(self, x):
    return self.classify(self.features_map(x))
