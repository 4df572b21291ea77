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
               blood_map_stride: int | None = None, decoder_width: int = 24, dtype=None):
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
    first = self.stem_factor if stem == "space_to_depth" else 2
    self.strides = tuple(first * 2 ** i for i in range(len(widths)))
    self.num_features = 2 * cin
    self.blood_map_stride = blood_map_stride
    if blood_map_stride is None:
      # Per-cell blood logit on the last feature map: what a strong-label loss
      # (seed 000 §2.1.5, supervision by masks) trains; unused with slice labels only.
      self.mask_head = nnx.Conv(cin, 1, (1, 1), dtype=dtype, rngs=rngs)
      self.head = nnx.Linear(self.num_features, num_classes, dtype=dtype, rngs=rngs)
    else:
      # A blood map finer than the last feature map (a light FPN decoder over the
      # stages at or coarser than `blood_map_stride`). A thin subdural or a
      # punctate bleed is one cell of an 8×8 map but a few cells of a 32×32 one,
      # so mask supervision says where it is. The map's maximum also feeds the
      # slice head: seed 000 §2.2.3 scores a slice by its maximum pixel.
      if blood_map_stride not in self.strides:
        raise ValueError(f"small_cnn: blood_map_stride={blood_map_stride} is not a stage stride {self.strides}")
      self.decoder_from = self.strides.index(blood_map_stride)
      self.laterals = nnx.List([nnx.Conv(w, decoder_width, (1, 1), dtype=dtype, rngs=rngs)
                                for w in widths[self.decoder_from:]])
      self.decoder = ConvBlock(decoder_width, decoder_width, stride=1, rngs=rngs, dtype=dtype)
      self.mask_head = nnx.Conv(decoder_width, 1, (1, 1), dtype=dtype, rngs=rngs)
      self.head = nnx.Linear(self.num_features + 2, num_classes, dtype=dtype, rngs=rngs)

  def _stages(self, x) -> list:
    """Outputs of every stage, finest first."""
    if self.stem == "space_to_depth":
      b, h, w, c = x.shape
      k = self.stem_factor
      if h % k or w % k:
        raise ValueError(f"small_cnn space_to_depth stem needs height and width divisible by {k}, got {h}×{w}")
      x = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // k, w // k, k * k * c)
    outs = []
    for i in range(0, len(self.blocks), 2):
      x = self.blocks[i + 1](self.blocks[i](x))
      outs.append(x)
    return outs

  def features_map(self, x):
    """Last convolutional feature map [B, h, w, C] (Grad-CAM, saliency loss)."""
    return self._stages(x)[-1]

  def pooled(self, fmap):
    return jnp.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=-1)

  def classify(self, fmap):
    if self.blood_map_stride is not None:
      raise ValueError("small_cnn with blood_map_stride classifies through heads(x), not classify(fmap)")
    return self.head(self.pooled(fmap))

  def mask_logits(self, fmap):
    """[B, h, w] blood logits at feature-map resolution."""
    return self.mask_head(fmap)[..., 0]

  def heads(self, x) -> dict:
    """{"logits": [B, classes], "mask_logits": [B, h, w]} in one pass."""
    stages = self._stages(x)
    fmap = stages[-1]
    if self.blood_map_stride is None:
      return {"logits": self.head(self.pooled(fmap)), "mask_logits": self.mask_logits(fmap)}
    top = None
    for lateral, feats in zip(reversed(self.laterals), reversed(stages[self.decoder_from:])):
      y = lateral(feats)
      if top is not None:
        f = y.shape[1] // top.shape[1]
        y = y + jnp.repeat(jnp.repeat(top, f, axis=1), f, axis=2)
      top = y
    blood = self.mask_head(self.decoder(jax.nn.relu(top)))[..., 0]
    flat = blood.reshape(blood.shape[0], -1).astype(jnp.float32)
    # Max and a soft maximum (log-mean-exp) of the blood map: the slice head sees
    # "the most blood-like spot" and "how much of it" (seed 000 §2.2.3).
    summary = jnp.stack([flat.max(-1), jax.nn.logsumexp(flat, -1) - jnp.log(flat.shape[-1])], -1)
    logits = self.head(jnp.concatenate([self.pooled(fmap), summary.astype(fmap.dtype)], -1))
    return {"logits": logits, "mask_logits": blood}

  def __call__(self, x):
    return self.heads(x)["logits"]
