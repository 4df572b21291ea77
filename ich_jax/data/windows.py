"""HU windows and channel recipes: how Hounsfield units become network input channels.

A window is data, `(level, width)`. A channel recipe is data too: a sequence of
`(slice_offset, level, width)` triples, one per output channel, where
`slice_offset` is relative to the slice being classified (0 = this slice,
-1 = the one below it along z, ...). Configs carry recipes; code never hard-wires
a window.

`apply_window` and `clip_rescale` use only array methods, so they work on numpy
and jax arrays alike; `apply_recipe` and `select_neighbours` are numpy.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Recipe = Sequence[tuple[int, float, float]]

# --- Named recipes -----------------------------------------------------------

# Seed 003 (RSNA 2019 1st place, §2 "Window settings as data preprocessing"):
# brain 40/80, subdural 80/200 and bone 600/2800, all three on the same slice,
# stacked as the three channels of an RGB image.
RSNA_3WINDOW = ((0, 40, 80), (0, 80, 200), (0, 600, 2800))

# Seed 003's *public code* variant (not the paper's text): the channels are the
# neighbouring slices s-1, s, s+1, each in the brain window 40/80. The window per
# channel stays explicit so a variant (e.g. a different window per neighbour) is
# a config change, not a code change.
RSNA_NEIGHBOURS = ((-1, 40, 80), (0, 40, 80), (1, 40, 80))

# Seed 000 (§2.1.4 "Pre-processing"): stroke 40/40, brain 40/80, bone 500/3000.
# The paper's 4th channel is the brain window after skull stripping by a 3D
# U-Net; that needs a skull-stripping step and arrives in a later issue (TODO:
# add it as a channel op once a brain mask exists in the example dict).
SEED000_3WINDOW = ((0, 40, 40), (0, 40, 80), (0, 500, 3000))

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


# --- Recipes -----------------------------------------------------------------


def recipe_offsets(recipe: Recipe) -> tuple[int, ...]:
  """The distinct slice offsets a recipe reads, sorted."""
  return tuple(sorted({int(o) for o, _, _ in recipe}))


def apply_recipe(slices_by_offset: Mapping[int, np.ndarray], recipe: Recipe) -> np.ndarray:
  """Builds the float32 [H, W, C] input, channel c = window c of slice s + offset c."""
  if not recipe:
    raise ValueError("empty channel recipe")
  channels = []
  for offset, level, width in recipe:
    if int(offset) not in slices_by_offset:
      raise KeyError(
          f"recipe channel {(offset, level, width)} needs slice offset {offset}, "
          f"have offsets {sorted(slices_by_offset)}"
      )
    channels.append(apply_window(np.asarray(slices_by_offset[int(offset)]), level, width))
  return np.stack(channels, axis=-1)


def apply_recipe_clip_rescale(
    slices_by_offset: Mapping[int, np.ndarray],
    recipe: Recipe,
    clip_range: tuple[float, float] = (-240.0, 240.0),
    out_range: tuple[float, float] = (-3.0, 3.0),
) -> np.ndarray:
  """As `apply_recipe`, but each channel is `clip_rescale` of its slice (level/width unused)."""
  if not recipe:
    raise ValueError("empty channel recipe")
  channels = []
  for offset, _, _ in recipe:
    if int(offset) not in slices_by_offset:
      raise KeyError(f"recipe needs slice offset {offset}, have offsets {sorted(slices_by_offset)}")
    channels.append(clip_rescale(np.asarray(slices_by_offset[int(offset)]), *clip_range, *out_range))
  return np.stack(channels, axis=-1)


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
