"""ResNet-18/50 (torchvision) and SE-ResNeXt-50/101 32×4d (Cadene's pretrainedmodels), one family.

SE-ResNeXt is a ResNet with grouped 3×3 convolutions (ResNeXt, Xie et al. 2017)
and a squeeze-and-excitation gate on every residual branch (Hu et al. 2018);
seed 003 (RSNA 2019 1st place) uses SE-ResNeXt101 32×4d as one of its three
slice backbones. The stride sits on the 3×3 convolution in both references
(torchvision's "ResNet v1.5", Cadene's SEResNeXtBottleneck).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import Classifier, ConvBN, compute_dtype, max_pool, pads


class SqueezeExcite(nnx.Module):
  """Channel gate from the pooled map: C → C/r → C, sigmoid (Hu et al. 2018, Fig. 3).

  Cadene writes the two layers as 1×1 convolutions with bias on a 1×1 map;
  linear layers on the pooled vector are the same function and parameters.
  """

  def __init__(self, channels: int, reduction: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(channels, channels // reduction, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(channels // reduction, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(x.mean(axis=(1, 2))))))
    return x * gate[:, None, None, :]


EXPANSION = {"basic": 1, "bottleneck": 4}


class Block(nnx.Module):
  """relu(residual(x) [· SE gate] + shortcut(x)); the shortcut is a strided 1×1 conv-BN when shapes change.

  "basic" (resnet18): two 3×3 convs. "bottleneck": 1×1 → 3×3 (grouped for
  ResNeXt) → 1×1 to 4·planes, width = floor(planes · width_per_group / 64) · groups
  as in torchvision and Cadene.
  """

  def __init__(self, kind: str, cin: int, planes: int, *, stride: int, groups: int, width_per_group: int,
               se_reduction: int | None, dtype, rngs: nnx.Rngs):
    cout = planes * EXPANSION[kind]
    if kind == "basic":
      convs = [ConvBN(cin, planes, 3, stride=stride, padding=pads(1, 1), dtype=dtype, rngs=rngs),
               ConvBN(planes, planes, 3, padding=pads(1, 1), act=None, dtype=dtype, rngs=rngs)]
    else:
      width = int(planes * (width_per_group / 64.0)) * groups
      convs = [ConvBN(cin, width, 1, padding="VALID", dtype=dtype, rngs=rngs),
               ConvBN(width, width, 3, stride=stride, padding=pads(1, 1), groups=groups, dtype=dtype, rngs=rngs),
               ConvBN(width, cout, 1, padding="VALID", act=None, dtype=dtype, rngs=rngs)]
    self.convs = nnx.List(convs)
    self.se = SqueezeExcite(cout, se_reduction, dtype=dtype, rngs=rngs) if se_reduction else nnx.data(None)
    self.shortcut = (ConvBN(cin, cout, 1, stride=stride, padding="VALID", act=None, dtype=dtype, rngs=rngs)
                     if stride != 1 or cin != cout else nnx.data(None))

  def __call__(self, x):
    y = x
    for conv in self.convs:
      y = conv(y)
    if self.se is not None:
      y = self.se(y)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(Classifier):
  """Stem (7×7/2 conv, 3×3/2 max pool), four stages, global average pool, linear head."""

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, block: str, layers: Sequence[int],
               groups: int = 1, width_per_group: int = 64, se_reduction: int | None = None,
               ceil_pool: bool = False, mask_head: bool = False, dtype=None,
               preprocessing: str | None = None):
    dtype = compute_dtype(dtype)
    if block not in EXPANSION:
      raise ValueError(f"resnet: block={block!r}; expected one of {sorted(EXPANSION)}")
    self.stem = ConvBN(in_channels, 64, 7, stride=2, padding=pads(3, 3), dtype=dtype, rngs=rngs)
    # Cadene's SENet stem pools with MaxPool2d(3, 2, ceil_mode=True) and no padding;
    # torchvision's with padding 1. Same output size on even inputs, shifted windows.
    self.ceil_pool = ceil_pool
    blocks, cin = [], 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
      for i in range(n):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(Block(block, cin, planes, stride=stride, groups=groups, width_per_group=width_per_group,
                            se_reduction=se_reduction, dtype=dtype, rngs=rngs))
        cin = planes * EXPANSION[block]
    self.blocks = nnx.List(blocks)
    self.stage_sizes = tuple(layers)      # the pretrained loaders name blocks layer{stage}.{i}
    self._init_heads(fmap_channels=cin, num_features=cin, num_classes=num_classes, mask_head=mask_head,
                     preprocessing=preprocessing, dtype=dtype, rngs=rngs)

  def features_map(self, x):
    x = self.stem(self._prepare(x))
    x = max_pool(x, 3, 2, padding=0, ceil_mode=True) if self.ceil_pool else max_pool(x, 3, 2, padding=1)
    for block in self.blocks:
      x = block(x)
    return x


@register("resnet18")
def resnet18(**kw) -> ResNet:
  return ResNet(block="basic", layers=(2, 2, 2, 2), **kw)


@register("resnet50")
def resnet50(**kw) -> ResNet:
  return ResNet(block="bottleneck", layers=(3, 4, 6, 3), **kw)


@register("se_resnext50_32x4d")
def se_resnext50_32x4d(**kw) -> ResNet:
  return ResNet(block="bottleneck", layers=(3, 4, 6, 3), groups=32, width_per_group=4, se_reduction=16,
                ceil_pool=True, **kw)


@register("se_resnext101_32x4d")
def se_resnext101_32x4d(**kw) -> ResNet:
  return ResNet(block="bottleneck", layers=(3, 4, 23, 3), groups=32, width_per_group=4, se_reduction=16,
                ceil_pool=True, **kw)
