"""What a slice becomes, read once from `config.data`: the checked, picklable `Plan` every slice pipeline follows.

`from_config(config.data)` validates the recipe, the intensity and where the
preprocessing runs (`preprocess_on`), filling keys an older config lacks from
`config_defaults`; the result crosses into grain workers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from ich_jax.data import config_defaults, windows

# ich_jax.data.windows (module docstring): fixed windows, seed 001's clip_rescale, each slice's header window.
INTENSITIES = ("window", "clip_rescale", "dicom_window")
PREPROCESS_ON = ("host", "device", "auto")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Plain, picklable view of `config.data` used inside workers."""
  image_size: int
  recipe: tuple[tuple[int, float, float, str], ...]
  intensity: str
  clip_range: tuple[float, float]
  clip_out_range: tuple[float, float]
  augment: Any  # FrozenConfigDict
  on_device: bool = False
  brain_mask: bool = False
  # > 0: examples carry the centre slice's hemorrhage instances, at most this many
  # (ich_jax.data.instances; the targets of seed 001's Mask R-CNN).
  instances: int = 0

  @property
  def stripped_offsets(self) -> tuple[int, ...]:
    """The slice offsets whose brain mask a channel op needs (recipe entries with "skull_stripped")."""
    return tuple(sorted({o for o, _, _, op in self.recipe if op == "skull_stripped"}))

  @property
  def offsets(self) -> tuple[int, ...]:
    return windows.recipe_offsets(self.recipe)


def from_config(cfg) -> Plan:
  """The `Plan` of `config.data` (a `Plan` passes through); a bad key raises ValueError naming it and its value."""
  if isinstance(cfg, Plan):
    return cfg
  recipe = windows.parse_recipe(cfg.recipe)
  if not recipe:
    raise ValueError("config.data.recipe is empty")
  if cfg.get("brain_mask", False) and 0 not in windows.recipe_offsets(recipe):
    raise ValueError(f"config data.brain_mask=True needs the slice itself (offset 0) in data.recipe; it reads "
                     f"offsets {windows.recipe_offsets(recipe)}")
  if cfg.intensity not in INTENSITIES:
    raise ValueError(f"config.data.intensity={cfg.intensity!r}; expected one of {INTENSITIES}")
  defaults = config_defaults.default_data_config()
  get = lambda k: cfg.get(k, defaults[k])
  return Plan(
      image_size=int(cfg.image_size),
      recipe=recipe,
      intensity=str(cfg.intensity),
      clip_range=tuple(float(x) for x in get("clip_range")),
      clip_out_range=tuple(float(x) for x in get("clip_out_range")),
      augment=ml_collections.FrozenConfigDict(cfg.augment),
      on_device=_on_device(get("preprocess_on"), skull_stripping=any(op for *_, op in recipe) or
                           bool(get("brain_mask")), instances=int(get("instances"))),
      brain_mask=bool(get("brain_mask")),
      instances=int(get("instances")),
  )


def _on_device(where: str, skull_stripping: bool = False, instances: int = 0) -> bool:
  if where not in PREPROCESS_ON:
    raise ValueError(f"config data.preprocess_on={where!r}; expected one of {PREPROCESS_ON}")
  # Instances are connected components of the augmented mask (scipy), found on the host.
  if instances:
    if where == "device":
      raise ValueError(f"config data.preprocess_on='device' with data.instances={instances}: instances are "
                       "found on the host (connected components of the augmented mask); set 'host' or 'auto'")
    return False
  # Skull stripping (ich_jax.data.skull_strip) is scipy morphology: such inputs are made on the host.
  if skull_stripping:
    if where == "device":
      raise ValueError("config data.preprocess_on='device': skull stripping (a recipe channel op "
                       "'skull_stripped', or data.brain_mask=True) runs on the host; set 'host' or 'auto'")
    return False
  if where == "auto":
    import jax  # the backend decides; asked when a pipeline is planned, not at import

    return jax.default_backend() != "cpu"
  return where == "device"


def num_channels(cfg) -> int:
  """Channels of the `image` the pipeline emits for `config.data` (one per recipe entry)."""
  return len(cfg.recipe)
