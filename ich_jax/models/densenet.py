"""DenseNet-121 and -169 as torchvision builds them (Huang et al. 2017, "DenseNet-BC").

Seed 003 (RSNA 2019 1st place) uses both as slice backbones; seed 000 (§2.1.5)
compares DenseNet121 trained on weak and strong labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import (
  TORCH_BN,
  TORCH_CONV_INIT,
  BatchNorm,
  Classifier,
  Conv,
  ConvBN,
  compute_dtype,
  max_pool,
  pads,
)

# BatchNorm settings per `variant`: torchvision's, or keras.applications' DenseNet (epsilon 1.001e-5,
# momentum 0.99), which its .h5 weights were trained with; the layers are otherwise the same.
VARIANTS = {"torchvision": TORCH_BN, "keras": {"momentum": 0.99, "epsilon": 1.001e-5}}


class BNReLUConv(nnx.Module):
  """BatchNorm → ReLU → conv (no bias): DenseNet's pre-activation order."""

  def __init__(self, cin: int, cout: int, kernel: int, *, bn: dict, dtype, rngs: nnx.Rngs):
    self.norm = BatchNorm(cin, dtype=dtype, rngs=rngs, **bn)
    self.conv = Conv(cin, cout, (kernel, kernel), padding=pads(kernel // 2, kernel // 2), use_bias=False,
                     kernel_init=TORCH_CONV_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(jax.nn.relu(self.norm(x)))


class DenseLayer(nnx.Module):
  """Bottleneck 1×1 to bn_size·growth channels, then 3×3 to `growth` new channels."""

  def __init__(self, cin: int, growth: int, bn_size: int, *, bn: dict, dtype, rngs: nnx.Rngs):
    self.bottleneck = BNReLUConv(cin, bn_size * growth, 1, bn=bn, dtype=dtype, rngs=rngs)
    self.conv = BNReLUConv(bn_size * growth, growth, 3, bn=bn, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(self.bottleneck(x))


class DenseNet(Classifier):
  """Stem, dense blocks joined by transitions (1×1 conv halving channels, 2×2 average pool), final BN-ReLU."""

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, block_config: Sequence[int],
               growth_rate: int = 32, num_init_features: int = 64, bn_size: int = 4,
               mask_head: bool = False, dtype=None, preprocessing: str | None = None,
               variant: str = "torchvision"):
    dtype = compute_dtype(dtype)
    if variant not in VARIANTS:
      raise ValueError(f"densenet: options.variant={variant!r}; expected one of {sorted(VARIANTS)}")
    self.variant = variant
    bn = VARIANTS[variant]
    self.stem = ConvBN(in_channels, num_init_features, 7, stride=2, padding=pads(3, 3), bn=bn, dtype=dtype,
                       rngs=rngs)
    layers, transitions, c = [], [], num_init_features
    for b, n in enumerate(block_config):
      block = []
      for _ in range(n):
        block.append(DenseLayer(c, growth_rate, bn_size, bn=bn, dtype=dtype, rngs=rngs))
        c += growth_rate
      layers.append(nnx.List(block))
      if b != len(block_config) - 1:
        transitions.append(BNReLUConv(c, c // 2, 1, bn=bn, dtype=dtype, rngs=rngs))
        c //= 2
    self.blocks = nnx.List(layers)
    self.transitions = nnx.List(transitions)
    self.final_norm = BatchNorm(c, dtype=dtype, rngs=rngs, **bn)
    self._init_heads(fmap_channels=c, num_features=c, num_classes=num_classes, mask_head=mask_head,
                     preprocessing=preprocessing, dtype=dtype, rngs=rngs)

  def features_map(self, x):
    x = max_pool(self.stem(self._prepare(x)), 3, 2, padding=1)
    for b, block in enumerate(self.blocks):
      features = [x]
      for layer in block:
        # Each layer sees the concatenation of all earlier maps of its block.
        features.append(layer(jnp.concatenate(features, axis=-1) if len(features) > 1 else features[0]))
      x = jnp.concatenate(features, axis=-1)
      if b < len(self.transitions):
        x = nnx.avg_pool(self.transitions[b](x), (2, 2), (2, 2))
    # torchvision applies this ReLU in forward() after `features`: the map Grad-CAM should see.
    return jax.nn.relu(self.final_norm(x))


@register("densenet121")
def densenet121(**kw) -> DenseNet:
  return DenseNet(block_config=(6, 12, 24, 16), **kw)


@register("densenet169")
def densenet169(**kw) -> DenseNet:
  return DenseNet(block_config=(6, 12, 32, 32), **kw)
