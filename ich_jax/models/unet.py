"""The PhysioNet CT-ICH patch U-Net (seed 002, §4 and Fig. 3).

Four contracting blocks (two 3×3 conv + ReLU, then 2×2 max pooling), a bottom
block, four expanding blocks (2× upsampling, a 2×2 "up-convolution",
concatenation with the skip, two 3×3 conv + ReLU), then a 3×3 conv to two maps
and a 1×1 conv: 24 convolutional layers, 4 poolings, 4 upsamplings, 4
concatenations, no dense layer, no normalisation (the paper's count; the
authors' Keras code, derived from zhixuhao/unet, agrees layer for layer).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register

# The authors' Keras code initialises every ReLU conv with he_normal.
_HE = jax.nn.initializers.he_normal()


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2× upsampling of [B, H, W, C] (Keras UpSampling2D)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class DoubleConv(nnx.Module):
  """Two 3×3 'same' convolutions, each followed by ReLU."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=None):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), kernel_init=_HE, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), kernel_init=_HE, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))


@register("unet")
class UNet(nnx.Module):
  """Seed 002's U-Net; `width` is the first block's channel count (64 in the paper), doubled per level.

  Returns per-pixel logits [B, H, W, num_classes]; the paper's sigmoid output is
  `jax.nn.sigmoid` of them, applied by the task (a loss on logits is stable).
  H and W must be multiples of 16 (four 2×2 poolings; the paper uses 160×160
  patches, the current public release 128×128).
  """

  depth = 4  # seed 002 §4: four blocks in each path (not an option: it is the paper's network)

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, width: int = 64,
               dropout: float = 0.5, dtype=None):
    widths = [width * 2 ** i for i in range(self.depth + 1)]
    self.down = nnx.List([DoubleConv(cin, cout, rngs=rngs, dtype=dtype)
                          for cin, cout in zip([in_channels] + widths[:-2], widths[:-1])])
    self.bottom = DoubleConv(widths[-2], widths[-1], rngs=rngs, dtype=dtype)
    # The paper is silent on regularisation; the authors' code drops 50% after
    # the fourth contracting block and the bottom block. `dropout=0` removes it.
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    # Up-convolution: 2× nearest upsampling then a 2×2 'same' conv + ReLU that
    # halves the channels (Keras code; the paper's "upsampling ... followed by a
    # 2×2 convolution").
    self.up = nnx.List([nnx.Conv(cout, cout // 2, (2, 2), kernel_init=_HE, dtype=dtype, rngs=rngs)
                        for cout in reversed(widths[1:])])
    self.up_blocks = nnx.List([DoubleConv(cout, cout // 2, rngs=rngs, dtype=dtype)
                               for cout in reversed(widths[1:])])
    # "two 3×3 convolutional filters to produce two images; one for the ICH
    # regions and one for the background" — two per output class here, so that
    # num_classes > 1 does not squeeze every class through two ReLU maps.
    self.pre_out = nnx.Conv(width, 2 * num_classes, (3, 3), kernel_init=_HE, dtype=dtype, rngs=rngs)
    self.out = nnx.Conv(2 * num_classes, num_classes, (1, 1), kernel_init=jax.nn.initializers.glorot_uniform(),
                        dtype=dtype, rngs=rngs)

  def __call__(self, x):
    _, h, w, _ = x.shape
    if h % 2 ** self.depth or w % 2 ** self.depth:
      raise ValueError(f"unet: input {h}×{w} is not a multiple of {2 ** self.depth} (four 2×2 poolings)")
    skips = []
    for i, block in enumerate(self.down):
      x = block(x)
      if i == self.depth - 1:
        x = self.drop(x)
      skips.append(x)
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = self.drop(self.bottom(x))
    for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
      x = jax.nn.relu(up(upsample2x(x)))
      x = block(jnp.concatenate([skip, x], axis=-1))
    return self.out(jax.nn.relu(self.pre_out(x)))
