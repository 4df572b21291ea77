"""HU windows and channel recipes: how Hounsfield units become network input channels.

A window is data, `(level, width)`. A channel recipe is data too: a sequence of
`(slice_offset, level, width)` triples, one per output channel, where
`slice_offset` is relative to the slice being classified (0 = this slice,
-1 = the one below it along z, ...), optionally with a fourth entry naming a
channel op applied after the window: `(0, 40, 80, "skull_stripped")` is seed
000's brain window after skull stripping (`CHANNEL_OPS`). Configs carry
recipes; code never hard-wires a window.

`apply_window` and `clip_rescale` use only array methods, so they work on numpy
and jax arrays alike; `header_window_bounds` and `minmax_window` take the array
module (`xp`: numpy or jax.numpy); `apply_recipe*` and `select_neighbours` are
numpy.

Intensities (`config.data.intensity`): "window" maps each channel by its
recipe window; "clip_rescale" by seed 001's fixed interval (level and width
unused); "dicom_window" windows each slice by its own DICOM header window and
min-max scales it, seed 003's public code (`header_window_bounds`): there the
recipe's level and width only stand in for a slice whose header has no window.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Recipe = Sequence[tuple]

# Channel ops (a recipe entry's optional 4th element): what happens to the windowed channel.
# "skull_stripped": pixels outside the slice's brain mask (ich_jax.data.skull_strip) take the
# channel's air value (seed 000 §2.1.4: "a brain window with skull stripping").
CHANNEL_OPS = ("", "skull_stripped")

# --- Named recipes -----------------------------------------------------------

# The brain window (level 40, width 80), as (level, width): the default display
# window of head CT, written as WindowCenter/WindowWidth into every DICOM slice
# ich_jax writes, and the window of prediction's overview images.
BRAIN_WINDOW = (40.0, 80.0)

# Seed 003 (RSNA 2019 1st place, §2 "Window settings as data preprocessing"):
# brain 40/80, subdural 80/200 and bone 600/2800, all three on the same slice,
# stacked as the three channels of an RGB image.
RSNA_3WINDOW = ((0, 40, 80), (0, 80, 200), (0, 600, 2800))

# Seed 003's *public code* variant (not the paper's text, which stacks no
# neighbours): the channels are the neighbouring slices s-1, s, s+1. With
# intensity "window" each is in the fixed brain window 40/80; the public code
# itself windows each slice by its own DICOM header window and min-max scales it
# (intensity "dicom_window", where 40/80 stands in for a slice without a header
# window). The window per channel stays explicit so a variant (e.g. a different
# window per neighbour) is a config change, not a code change.
RSNA_NEIGHBOURS = ((-1, 40, 80), (0, 40, 80), (1, 40, 80))

# Seed 000 (§2.1.4 "Pre-processing"): stroke window (width 40, level 40), brain
# (width 80, level 40), bone (width 3000, level 500), and 4) the brain window
# after skull stripping. The paper strips with an in-house 3D U-Net; here the
# op uses the classical mask of ich_jax.data.skull_strip.
SEED000_3WINDOW = ((0, 40, 40), (0, 40, 80), (0, 500, 3000))
SEED000_4WINDOW = SEED000_3WINDOW + ((0, 40, 80, "skull_stripped"),)

# Seed 001 (Image Preprocessing; hybrid 3D/2D Mask R-CNN on 5x512x512 input):
# five consecutive slices s-2..s+2. With intensity "clip_rescale" only the
# offsets are used; level 0 / width 480 is the same [-240, 240] HU interval, so
# under intensity "window" the channels differ only by the affine map
# [0, 1] -> [-3, 3].
SEED001_5SLICE = tuple((o, 0, 480) for o in (-2, -1, 0, 1, 2))


# --- Intensity maps ----------------------------------------------------------


def _float32(x):
  # Python scalars and lists become numpy; numpy and jax arrays keep their type.
  if not hasattr(x, "astype"):
    x = np.asarray(x)
  return x.astype(np.float32)


def _numpy_target(hu, out):
  # `out` (a float32 numpy array of hu's shape) receives hu; otherwise a copy, so
  # the in-place steps of the callers never touch `hu`.
  if out is None:
    return _float32(hu)
  out[...] = hu
  return out


def apply_window(hu, level: float, width: float, out: np.ndarray | None = None):
  """Maps HU to [0, 1]: `level - width/2` -> 0, `level + width/2` -> 1, clipped.

  `out`: a float32 numpy array of hu's shape to write into (numpy input only).
  """
  if width <= 0:
    raise ValueError(f"window width must be positive, got level={level} width={width}")
  lo = level - width / 2.0
  x = _numpy_target(hu, out)
  if isinstance(x, np.ndarray):
    # In place: windowing a 512x512 slice is the hot path of the input pipeline.
    x -= lo
    x /= float(width)
    return np.clip(x, 0.0, 1.0, out=x)
  return ((x - lo) / float(width)).clip(0.0, 1.0)


def clip_rescale(hu, lo: float = -240.0, hi: float = 240.0, out_lo: float = -3.0, out_hi: float = 3.0,
                 out: np.ndarray | None = None):
  """Clips HU to [lo, hi] and maps that interval linearly onto [out_lo, out_hi].

  Defaults from seed 001 (Image Preprocessing): "all matrix values less than
  -240 HU or greater than 240 HU were clipped, and the entire volume was
  rescaled to a range of [-3, 3]". `out` as in `apply_window`.
  """
  if hi <= lo:
    raise ValueError(f"clip_rescale needs lo < hi, got lo={lo} hi={hi}")
  x = _numpy_target(hu, out)
  if isinstance(x, np.ndarray):
    np.clip(x, lo, hi, out=x)
    x -= lo
    x *= (out_hi - out_lo) / (hi - lo)
    x += out_lo
    return x
  x = x.clip(lo, hi)
  return (x - lo) * ((out_hi - out_lo) / (hi - lo)) + out_lo


def header_window_bounds(window, level: float, width: float, xp=np):
  """A slice's DICOM header window [..., 2] (center, width) → the HU bounds (lo, hi) [...] seed 003's public code
  clips to.

  2DNet/src/prepare_data.py: `int()` of the first WindowCenter and WindowWidth
  (towards zero), then lo = c - w // 2, hi = c + w // 2. A slice whose header
  has no window (nan, as the builders store it, or a width <= 0) takes the
  recipe's (`level`, `width`) by the same rule; the public code lost such a
  slice (its PNG is never written).
  """
  window = xp.asarray(window, dtype=xp.float32)
  center, span = window[..., 0], window[..., 1]
  present = xp.isfinite(center) & xp.isfinite(span) & (span > 0)
  center = xp.trunc(xp.where(present, center, level))
  half = xp.floor(xp.trunc(xp.where(present, span, width)) / 2)
  return center - half, center + half


def minmax_window(hu, lo, hi, xp=np):
  """clip(hu, lo, hi) min-max scaled to [0, 1] over each slice (the last two axes): seed 003's public code
  (2DNet/src/prepare_data.py, `window_image` then `normalize_minmax`).

  `lo`, `hi`: the bounds of each slice (`header_window_bounds`), shaped as
  hu's leading axes. The clipped slice's own minimum maps to 0 and its maximum
  to 1, so a slice that does not reach both bounds is stretched; a slice
  constant after clipping (the public code divides by zero there) is 0.
  """
  hu = xp.asarray(hu, dtype=xp.float32)
  lo = xp.maximum(xp.asarray(lo, dtype=xp.float32)[..., None, None], hu.min(axis=(-2, -1), keepdims=True))
  hi = xp.minimum(xp.asarray(hi, dtype=xp.float32)[..., None, None], hu.max(axis=(-2, -1), keepdims=True))
  spread = hi - lo
  varies = spread > 0
  scaled = (xp.clip(hu, lo, hi) - lo) / xp.where(varies, spread, 1.0)
  return xp.where(varies, scaled, 0.0).astype(xp.float32)


def apply_dicom_window(hu, window, level: float, width: float, xp=np):
  """One slice (or a batch, hu [..., H, W] with window [..., 2]) in its own header window, min-max scaled:
  intensity "dicom_window" (`header_window_bounds`, `minmax_window`)."""
  return minmax_window(hu, *header_window_bounds(window, level, width, xp), xp)


# --- Recipes -----------------------------------------------------------------


def parse_recipe(recipe: Recipe) -> tuple[tuple[int, float, float, str], ...]:
  """Recipe entries as (offset, level, width, op) with op "" where none is named; checks the op names."""
  out = []
  for entry in recipe:
    entry = tuple(entry)
    if len(entry) not in (3, 4):
      raise ValueError(f"recipe entry {entry}: expected (slice_offset, level, width) or (..., op)")
    op = str(entry[3]) if len(entry) == 4 else ""
    if op not in CHANNEL_OPS:
      raise ValueError(f"recipe entry {entry}: unknown channel op {op!r}; known: {CHANNEL_OPS[1:]}")
    out.append((int(entry[0]), float(entry[1]), float(entry[2]), op))
  return tuple(out)


def recipe_offsets(recipe: Recipe) -> tuple[int, ...]:
  """The distinct slice offsets a recipe reads, sorted."""
  return tuple(sorted({int(entry[0]) for entry in recipe}))


def _channels(slices_by_offset: Mapping[int, np.ndarray], recipe: Recipe, intensity, air: float,
              pixel_spacing) -> np.ndarray:
  """Channel c = intensity(slice s + offset c, level c, width c, offset c), then its op; stacked [H, W, C]."""
  entries = parse_recipe(recipe)
  if not entries:
    raise ValueError("empty channel recipe")
  masks: dict[int, np.ndarray] = {}
  channels = []
  for offset, level, width, op in entries:
    if offset not in slices_by_offset:
      raise KeyError(f"recipe channel {(offset, level, width)} needs slice offset {offset}, "
                     f"have offsets {sorted(slices_by_offset)}")
    hu = np.asarray(slices_by_offset[offset])
    channel = intensity(hu, level, width, offset)
    if op == "skull_stripped":
      if offset not in masks:
        from ich_jax.data import skull_strip  # scipy, only for recipes that strip

        masks[offset] = skull_strip.brain_mask(hu, pixel_spacing)
      channel = np.where(masks[offset], channel, np.float32(air))
    channels.append(channel)
  return np.stack(channels, axis=-1)


def apply_recipe(slices_by_offset: Mapping[int, np.ndarray], recipe: Recipe, pixel_spacing=None) -> np.ndarray:
  """Builds the float32 [H, W, C] input, channel c = window c of slice s + offset c (then its op).

  `pixel_spacing` (mm, row and column) sizes the skull-stripping morphology; without it
  `skull_strip.DEFAULT_SPACING_MM` is assumed.
  """
  return _channels(slices_by_offset, recipe, lambda hu, level, width, offset: apply_window(hu, level, width), 0.0,
                   pixel_spacing)


def apply_recipe_clip_rescale(
    slices_by_offset: Mapping[int, np.ndarray],
    recipe: Recipe,
    clip_range: tuple[float, float] = (-240.0, 240.0),
    out_range: tuple[float, float] = (-3.0, 3.0),
    pixel_spacing=None,
) -> np.ndarray:
  """As `apply_recipe`, but each channel is `clip_rescale` of its slice (level/width unused)."""
  return _channels(slices_by_offset, recipe,
                   lambda hu, level, width, offset: clip_rescale(hu, *clip_range, *out_range), out_range[0],
                   pixel_spacing)


def apply_recipe_dicom_window(slices_by_offset: Mapping[int, np.ndarray], windows_by_offset: Mapping[int, np.ndarray],
                              recipe: Recipe, pixel_spacing=None) -> np.ndarray:
  """As `apply_recipe`, but channel c is slice s + offset c in that slice's own header window
  (`windows_by_offset`: offset → (center, width), nan where the header had none), min-max scaled
  (`apply_dicom_window`); the entry's level and width stand in for a missing window."""
  def intensity(hu, level, width, offset):
    if offset not in windows_by_offset:
      raise KeyError(f"recipe channel {(offset, level, width)} needs the header window of slice offset {offset}, "
                     f"have windows of offsets {sorted(windows_by_offset)}")
    return apply_dicom_window(hu, windows_by_offset[offset], level, width)

  return _channels(slices_by_offset, recipe, intensity, 0.0, pixel_spacing)


def select_neighbours(available: Sequence[int], slice_index: int, offsets: Sequence[int]) -> dict[int, int]:
  """For each offset, the slice index to read: `slice_index + offset` if it exists.

  Otherwise the nearest existing slice: past either end of the series this
  repeats the first/last slice (the usual edge rule for neighbour stacking), and
  inside a gap it takes the closer neighbour, on a tie the one nearer to
  `slice_index` (so a channel never reaches further than asked).

  Args:
    available: sorted slice indices present in the series.
    slice_index: the centre slice.
    offsets: relative offsets wanted.
  """
  avail = np.asarray(available)
  if avail.size == 0:
    raise ValueError("select_neighbours: empty series")
  out = {}
  for offset in offsets:
    target = slice_index + int(offset)
    k = int(np.searchsorted(avail, target))
    if k < avail.size and avail[k] == target:
      out[int(offset)] = target
      continue
    candidates = [int(avail[j]) for j in (k - 1, k) if 0 <= j < avail.size]
    out[int(offset)] = min(candidates, key=lambda c: (abs(c - target), abs(c - slice_index)))
  return out
