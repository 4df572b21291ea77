"""MobileNetV2 as torchvision builds it (Sandler et al. 2018), width multiplier 1.0.

Seed 000 (§2.1.5) compares it, trained on weak and strong labels, with
DenseNet121, InceptionResNetV2 and VGG19.
"""
from __future__ import annotations

import jax
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import Classifier, ConvBN, compute_dtype, pads

# Sandler et al. 2018, Table 2: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# `variant`: torchvision's network, or keras.applications.MobileNetV2, whose .h5 weights expect TF's "same"
# padding (stride-2 layers pad only after the image on even sizes: one pixel's shift against torchvision's
# symmetric padding) and BatchNorm epsilon 1e-3, momentum 0.999.
VARIANTS = {"torchvision": {"padding": "torch", "bn": None},
            "keras": {"padding": "SAME", "bn": {"epsilon": 1e-3, "momentum": 0.999}}}


def _pad(variant: str):
  return pads(1, 1) if VARIANTS[variant]["padding"] == "torch" else "SAME"


class InvertedResidual(nnx.Module):
  """1×1 expand (ReLU6) → 3×3 depthwise (ReLU6) → 1×1 linear projection; identity shortcut when shapes match."""

  def __init__(self, cin: int, cout: int, *, stride: int, expand: int, variant: str, dtype, rngs: nnx.Rngs):
    hidden = round(cin * expand)
    bn = VARIANTS[variant]["bn"]
    layers = [ConvBN(cin, hidden, 1, padding="VALID", act=jax.nn.relu6, bn=bn, dtype=dtype, rngs=rngs)
              ] if expand != 1 else []
    layers += [ConvBN(hidden, hidden, 3, stride=stride, padding=_pad(variant), groups=hidden, act=jax.nn.relu6,
                      bn=bn, dtype=dtype, rngs=rngs),
               ConvBN(hidden, cout, 1, padding="VALID", act=None, bn=bn, dtype=dtype, rngs=rngs)]
    self.layers = nnx.List(layers)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    y = x
    for layer in self.layers:
      y = layer(y)
    return x + y if self.residual else y


class MobileNetV2(Classifier):

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, last_channel: int = 1280,
               dropout: float = 0.2, mask_head: bool = False, dtype=None,
               preprocessing: str | None = None, variant: str = "torchvision"):
    dtype = compute_dtype(dtype)
    if variant not in VARIANTS:
      raise ValueError(f"mobilenet_v2: options.variant={variant!r}; expected one of {sorted(VARIANTS)}")
    self.variant = variant
    bn = VARIANTS[variant]["bn"]
    layers, c = [ConvBN(in_channels, 32, 3, stride=2, padding=_pad(variant), act=jax.nn.relu6, bn=bn, dtype=dtype,
                        rngs=rngs)], 32
    for t, cout, n, s in INVERTED_RESIDUAL_SETTING:
      for i in range(n):
        layers.append(InvertedResidual(c, cout, stride=s if i == 0 else 1, expand=t, variant=variant, dtype=dtype,
                                       rngs=rngs))
        c = cout
    layers.append(ConvBN(c, last_channel, 1, padding="VALID", act=jax.nn.relu6, bn=bn, dtype=dtype, rngs=rngs))
    self.layers = nnx.List(layers)
    self.stage_sizes = tuple(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)   # timm names blocks.{stage}.{i}
    # torchvision's classifier: Dropout(0.2) → Linear.
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self._init_heads(fmap_channels=last_channel, num_features=last_channel, num_classes=num_classes,
                     mask_head=mask_head, preprocessing=preprocessing, dtype=dtype, rngs=rngs)

  def features_map(self, x):
    x = self._prepare(x)
    for layer in self.layers:
      x = layer(x)
    return x

  def classify(self, fmap):
    return self.head(self.dropout(self.pooled(fmap)))


@register("mobilenet_v2")
def mobilenet_v2(**kw) -> MobileNetV2:
  return MobileNetV2(**kw)
