"""Where a slice is cut into windows and how far apart the slices of a series lie.

Pure functions shared by the data pipelines and the models (which must not
import each other): the patch U-Net trains on the windows the sliding-window
inference later sees (`ich_jax.data.patches`, `ich_jax.models.maps`), and the
sequence models read the slice gap the stage-1 export writes
(`ich_jax.data.stage_exports`, `ich_jax.models.sequence`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def as_pair(v, name: str) -> tuple[int, int]:
  """A window or stride size as (rows, cols): an int is square; `name` is the option it came from."""
  out = (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(x) for x in v)
  if len(out) != 2 or min(out) < 1:
    raise ValueError(f"{name}={v!r}: expected a positive int or a pair of them")
  return out


def patch_starts(size: int, patch: int, stride: int) -> tuple[int, ...]:
  """Window origins along one axis: 0, stride, 2·stride, ... and `size - patch` if the grid stops short of it."""
  if patch > size:
    raise ValueError(f"patch {patch} is larger than the image ({size} pixels): use a smaller patch or a larger "
                     "image_size")
  if stride < 1:
    raise ValueError(f"stride={stride} must be >= 1")
  starts = list(range(0, size - patch + 1, stride))
  if starts[-1] != size - patch:
    starts.append(size - patch)
  return tuple(starts)


def patch_grid(shape: tuple[int, int], patch, stride) -> list[tuple[int, int]]:
  """(row, col) origins of every window over an image of `shape`, row-major."""
  (ph, pw), (sh, sw) = as_pair(patch, "patch"), as_pair(stride, "stride")
  return [(y, x) for y in patch_starts(shape[0], ph, sh) for x in patch_starts(shape[1], pw, sw)]


def slice_gaps(z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Slice gap [B, S]: distance to the next slice; the last valid slice repeats the one before.

  The public code's `Position2` difference input (seq_dataset.py), which lets
  sequence model 2 adapt to slice thickness (seed 003 §2). A series of one slice
  has gap 0. `z` is [B, S] slice positions along the scan axis, sorted.
  """
  nxt = jnp.concatenate([z[:, 1:], z[:, -1:]], axis=1) - z
  length = z.shape[1] if mask is None else mask.sum(axis=1, keepdims=True)
  s = jnp.arange(z.shape[1])[None]
  prev = jnp.take_along_axis(nxt, jnp.clip(s - 1, 0), axis=1)
  gaps = jnp.where(s >= length - 1, prev, nxt)
  gaps = jnp.where(length > 1, gaps, 0.0)
  return gaps if mask is None else jnp.where(mask, gaps, 0.0)
