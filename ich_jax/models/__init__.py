"""Model registry: a config names a model, `build` constructs it.

Adding a model is one module plus one `@register("name")` line; nothing in the
trainer changes. Modules here know nothing about datasets or losses.
"""
from __future__ import annotations

import importlib
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


def build(name: str, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, **options: Any) -> nnx.Module:
  """Constructs model `name`; NHWC input with `in_channels`, `num_classes` logits."""
  _load_all()
  if name not in _REGISTRY:
    raise KeyError(f"config model.name={name!r} is not a registered model; known: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, rngs=rngs, **options)
