"""VGG-19, with and without batch norm, as torchvision builds them (Simonyan & Zisserman 2015, config E).

Seed 000 (§2.1.5) compares VGG19 trained on weak and strong labels. Its
classifier is the reference one: 7×7 adaptive average pool, 25088 → 4096 →
4096 → classes with ReLU and dropout 0.5 — 120M of its 144M parameters.
Options `cfg` (layer widths, "M" a pool; config E by default) and `fc_widths`
build the other VGG configurations and the small ones the tests load weights into.
"""
from __future__ import annotations

import jax
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import (
  TORCH_CONV_INIT,
  Classifier,
  ConvBN,
  adaptive_avg_pool,
  compute_dtype,
  max_pool,
  pads,
)

# Config "E": channels per 3×3 conv, "M" a 2×2 max pool.
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# torchvision: nn.init.normal_(linear.weight, 0, 0.01).
_LINEAR_INIT = nnx.initializers.normal(0.01)


class ConvReLU(nnx.Module):
  """3×3 conv with bias → ReLU: VGG without batch norm."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), padding=pads(1, 1), kernel_init=TORCH_CONV_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.conv(x))


class VGG(Classifier):
  """`features_map` is the last conv layer's ReLU output, before the fifth pool: Grad-CAM's VGG layer
  (Selvaraju et al. 2017 use VGG-16's last conv layer); `pooled` is the 4096-d penultimate vector."""

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, batch_norm: bool = False,
               dropout: float = 0.5, mask_head: bool = False, dtype=None, preprocessing: str | None = None,
               cfg=VGG19, fc_widths: tuple[int, int] = (4096, 4096)):
    dtype = compute_dtype(dtype)
    cfg = tuple(cfg)
    if not cfg or cfg[-1] != "M":
      raise ValueError(f"vgg: options.cfg must end with a max pool 'M' (VGG's fifth pool), got {cfg!r}")
    layers, c = [], in_channels
    # The last pool (cfg[-1]) opens `pooled`, so that features_map ends at the last conv.
    for v in cfg[:-1]:
      if v == "M":
        layers.append(None)
        continue
      # torchvision's vgg19_bn keeps the conv bias before BatchNorm; its count includes it.
      layers.append(ConvBN(c, v, 3, padding=pads(1, 1), conv_bias=True, dtype=dtype, rngs=rngs) if batch_norm
                    else ConvReLU(c, v, dtype=dtype, rngs=rngs))
      c = v
    self.layers = nnx.List(layers)
    w1, w2 = fc_widths
    self.fc1 = nnx.Linear(c * 7 * 7, w1, kernel_init=_LINEAR_INIT, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(w1, w2, kernel_init=_LINEAR_INIT, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    head = nnx.Linear(w2, num_classes, kernel_init=_LINEAR_INIT, dtype=dtype, rngs=rngs)
    self._init_heads(fmap_channels=c, num_features=w2, num_classes=num_classes, mask_head=mask_head,
                     preprocessing=preprocessing,
                     dtype=dtype, rngs=rngs, head=head)

  def features_map(self, x):
    x = self._prepare(x)
    for layer in self.layers:
      x = max_pool(x, 2, 2) if layer is None else layer(x)
    return x

  def pooled(self, fmap):
    x = adaptive_avg_pool(max_pool(fmap, 2, 2), (7, 7))
    x = x.reshape(x.shape[0], -1)
    x = self.dropout(jax.nn.relu(self.fc1(x)))
    return self.dropout(jax.nn.relu(self.fc2(x)))


@register("vgg19")
def vgg19(**kw) -> VGG:
  return VGG(batch_norm=False, **kw)


@register("vgg19_bn")
def vgg19_bn(**kw) -> VGG:
  return VGG(batch_norm=True, **kw)
