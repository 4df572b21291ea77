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
               widths: Sequence[int] = (16, 32, 64, 96), stem_stride: int = 2, dtype=None):
    blocks = []
    cin = in_channels
    for i, width in enumerate(widths):
      blocks.append(ConvBlock(cin, width, stride=stem_stride if i == 0 else 2, rngs=rngs, dtype=dtype))
      blocks.append(ConvBlock(width, width, stride=1, rngs=rngs, dtype=dtype))
      cin = width
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(2 * cin, num_classes, dtype=dtype, rngs=rngs)
    self.num_features = 2 * cin

  def features_map(self, x):
    """Last convolutional feature map [B, h, w, C] (Grad-CAM, saliency loss)."""
    for block in self.blocks:
      x = block(x)
    return x

  def pooled(self, fmap):
    return jnp.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=-1)

  def __call__(self, x):
    return self.head(self.pooled(self.features_map(x)))
