"""Inception-ResNet-v2 as the Keras application builds it (Szegedy et al. 2017, Figs. 3, 9–18).

Seed 000 (§2.1.5) compares InceptionResNetV2 trained on weak and strong labels;
its code is Keras, so this follows `keras.applications.InceptionResNetV2`, not
the paper's figures where they differ: BatchNorm without scale (gamma) — the
following ReLU or conv makes it redundant — eps 1e-3, momentum 0.99; conv
layers without bias except each residual block's 1×1 up-projection, which has a
bias and no BatchNorm. "valid" convolutions shrink the map: inputs must be at
least 75×75 (the reference size is 299×299, giving an 8×8 feature map).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import Classifier, ConvBN, compute_dtype

MIN_SIZE = 75
# Keras BatchNormalization(scale=False) defaults; glorot_uniform is Keras's Conv2D initialiser.
_KERAS_BN = {"use_scale": False, "epsilon": 1e-3, "momentum": 0.99}
_KERAS_INIT = nnx.initializers.glorot_uniform()


def conv_bn(cin: int, cout: int, kernel, *, stride: int = 1, padding: str = "SAME", act=jax.nn.relu, dtype,
            rngs: nnx.Rngs) -> ConvBN:
  """Keras's `conv2d_bn`: conv without bias → BatchNorm(scale=False) → ReLU."""
  return ConvBN(cin, cout, kernel, stride=stride, padding=padding, act=act, bn=_KERAS_BN, kernel_init=_KERAS_INIT,
                dtype=dtype, rngs=rngs)


def _apply(layer, x):
  if layer == "max":    # stem and reductions: MaxPooling2D(3, strides=2, padding="valid")
    return nnx.max_pool(x, (3, 3), (2, 2), "VALID")
  if layer == "avg":    # mixed_5b: AveragePooling2D(3, strides=1, padding="same"); TF leaves padding out of the mean
    return nnx.avg_pool(x, (3, 3), (1, 1), "SAME", count_include_pad=False)
  return layer(x)


class Branches(nnx.Module):
  """Parallel chains of conv_bn (a pooling step is the string "max" or "avg"); outputs concatenated."""

  def __init__(self, cin: int, chains: Sequence[Sequence], *, dtype, rngs: nnx.Rngs):
    built = []
    for chain in chains:
      layers, c = [], cin
      for spec in chain:
        if isinstance(spec, str):
          layers.append(spec)
          continue
        cout, kernel, *rest = spec
        stride, padding = rest if rest else (1, "SAME")
        layers.append(conv_bn(c, cout, kernel, stride=stride, padding=padding, dtype=dtype, rngs=rngs))
        c = cout
      built.append(nnx.List(layers))
    self.chains = nnx.List(built)

  def __call__(self, x):
    outs = []
    for chain in self.chains:
      y = x
      for layer in chain:
        y = _apply(layer, y)
      outs.append(y)
    return jnp.concatenate(outs, axis=-1)


# Keras inception_resnet_block: branch chains of (filters, kernel) for each block type.
_BLOCK_CHAINS = {
    "block35": [[(32, 1)], [(32, 1), (32, 3)], [(32, 1), (48, 3), (64, 3)]],
    "block17": [[(192, 1)], [(128, 1), (160, (1, 7)), (192, (7, 1))]],
    "block8": [[(192, 1)], [(192, 1), (224, (1, 3)), (256, (3, 1))]],
}


class InceptionResNetBlock(nnx.Module):
  """x + scale · up(concat(branches)), then ReLU (Szegedy et al. 2017 §3.3: scaled residuals stabilise training)."""

  def __init__(self, channels: int, kind: str, scale: float, *, activation: bool = True, dtype, rngs: nnx.Rngs):
    self.branches = Branches(channels, _BLOCK_CHAINS[kind], dtype=dtype, rngs=rngs)
    mixed = sum(chain[-1][0] for chain in _BLOCK_CHAINS[kind])
    self.up = nnx.Conv(mixed, channels, (1, 1), use_bias=True, kernel_init=_KERAS_INIT, dtype=dtype, rngs=rngs)
    self.scale = scale
    self.activation = activation

  def __call__(self, x):
    x = x + self.scale * self.up(self.branches(x))
    return jax.nn.relu(x) if self.activation else x


class InceptionResNetV2(Classifier):

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, mask_head: bool = False, dtype=None,
               preprocessing: str | None = None, repeats: tuple[int, int, int] = (10, 20, 10)):
    dtype = compute_dtype(dtype)
    kw = {"dtype": dtype, "rngs": rngs}
    v = "VALID"
    self.stem = nnx.List([
        conv_bn(in_channels, 32, 3, stride=2, padding=v, **kw), conv_bn(32, 32, 3, padding=v, **kw),
        conv_bn(32, 64, 3, **kw), "max",
        conv_bn(64, 80, 1, padding=v, **kw), conv_bn(80, 192, 3, padding=v, **kw), "max",
    ])
    # mixed_5b (Inception-A): 96 + 64 + 96 + 64 = 320 channels.
    self.mixed_5b = Branches(192, [[(96, 1)], [(48, 1), (64, 5)], [(64, 1), (96, 3), (96, 3)], ["avg", (64, 1)]],
                             **kw)
    # `repeats`: block35, block17, block8 counts (Keras: 10, 20, 10; the last block8 has no ReLU). Fewer
    # build the small networks the tests load weights into.
    n35, n17, n8 = repeats
    if n8 < 1:
      raise ValueError(f"inception_resnet_v2: options.repeats={tuple(repeats)}; the last entry (block8) must be ≥ 1")
    self.block35 = nnx.List([InceptionResNetBlock(320, "block35", 0.17, **kw) for _ in range(n35)])
    # mixed_6a (Reduction-A): 384 + 384 + 320 = 1088.
    self.mixed_6a = Branches(320, [[(384, 3, 2, v)], [(256, 1), (256, 3), (384, 3, 2, v)], ["max"]], **kw)
    self.block17 = nnx.List([InceptionResNetBlock(1088, "block17", 0.1, **kw) for _ in range(n17)])
    # mixed_7a (Reduction-B): 384 + 288 + 320 + 1088 = 2080.
    self.mixed_7a = Branches(1088, [[(256, 1), (384, 3, 2, v)], [(256, 1), (288, 3, 2, v)],
                                    [(256, 1), (288, 3), (320, 3, 2, v)], ["max"]], **kw)
    # Nine block8 with ReLU, the tenth at scale 1 without.
    self.block8 = nnx.List([InceptionResNetBlock(2080, "block8", 0.2, **kw) for _ in range(n8 - 1)]
                           + [InceptionResNetBlock(2080, "block8", 1.0, activation=False, **kw)])
    self.conv_7b = conv_bn(2080, 1536, 1, **kw)
    self._init_heads(fmap_channels=1536, num_features=1536, num_classes=num_classes, mask_head=mask_head,
                     preprocessing=preprocessing, **kw)

  def features_map(self, x):
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"inception_resnet_v2 needs images of at least {MIN_SIZE}×{MIN_SIZE} (its stem and "
                       f"reductions use unpadded convolutions); got {x.shape[1]}×{x.shape[2]}")
    x = self._prepare(x)
    for layer in self.stem:
      x = _apply(layer, x)
    x = self.mixed_5b(x)
    for block in self.block35:
      x = block(x)
    x = self.mixed_6a(x)
    for block in self.block17:
      x = block(x)
    x = self.mixed_7a(x)
    for block in self.block8:
      x = block(x)
    return self.conv_7b(x)


@register("inception_resnet_v2")
def inception_resnet_v2(**kw) -> InceptionResNetV2:
  return InceptionResNetV2(**kw)
