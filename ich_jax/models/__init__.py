"""Model registry: a config names a model, `build` constructs it.

Adding a model is one module plus one `@register("name")` line; nothing in the
trainer changes. Modules here know nothing about datasets or losses.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from flax import nnx

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}

# Modules that hold registered models, imported lazily by `build` so that
# importing the package does no work.
_MODULES = (
    "ich_jax.models.small_cnn",
    "ich_jax.models.resnet",
    "ich_jax.models.densenet",
    "ich_jax.models.mobilenet_v2",
    "ich_jax.models.vgg",
    "ich_jax.models.inception_resnet_v2",
    "ich_jax.models.unet",
    "ich_jax.models.inception_unet",
    "ich_jax.models.fpn3d2d",
    "ich_jax.models.maskrcnn",
    "ich_jax.models.sequence",
    "ich_jax.models.ensemble",
)


def register(name: str):
  """Class/function decorator adding a model constructor under `name`."""

  def wrap(ctor):
    if name in _REGISTRY and _REGISTRY[name] is not ctor:
      raise ValueError(f"model name {name!r} registered twice")
    _REGISTRY[name] = ctor
    return ctor

  return wrap


def _load_all() -> None:
  for module in _MODULES:
    importlib.import_module(module)


def names() -> list[str]:
  _load_all()
  return sorted(_REGISTRY)


def build(name: str, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, pretrained: str | None = None,
          first_conv_rule: str = "mean", **options: Any) -> nnx.Module:
  """Constructs model `name`; NHWC input with `in_channels`, `num_classes` logits.

  `pretrained`: a weight file (.safetensors, .pth/.pt, .h5) loaded by `ich_jax.models.weight_files` (all or
  nothing; what it did is logged); `first_conv_rule` adapts its first convolution to `in_channels` ≠ 3.
  """
  _load_all()
  if name not in _REGISTRY:
    raise KeyError(f"config model.name={name!r} is not a registered model; known: {', '.join(sorted(_REGISTRY))}")
  model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, rngs=rngs, **options)
  if pretrained:
    from ich_jax.models import weight_files
    report = weight_files.load(model, name, pretrained, first_conv_rule=first_conv_rule)
    logging.getLogger(__name__).info("pretrained weights: %s", report.summary())
  return model
