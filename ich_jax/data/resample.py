"""Build-time in-plane downsampling of stored slices (builders resize once; the pipeline's `resize` handles any ratio at load time)."""
from __future__ import annotations

import numpy as np


def _factor(size: int, out_size: int) -> int:
  if size % out_size:
    raise ValueError(f"cannot area-resize {size} pixels to {out_size}: not an integer factor")
  return size // out_size


def area_downsample(images: np.ndarray, out_size: int) -> np.ndarray:
  """Mean over k×k blocks of the last two axes ([..., H, W] → [..., out, out]).

  Averaging HU is what a coarser detector would record (partial volume), so the
  result stays in Hounsfield units. Integer types are rounded back.
  """
  h, w = images.shape[-2:]
  if (h, w) == (out_size, out_size):
    return images
  k = _factor(h, out_size)
  if _factor(w, out_size) != k:
    raise ValueError(f"non-square slice {h}×{w} cannot be resized to {out_size}×{out_size}")
  blocks = images.reshape(images.shape[:-2] + (out_size, k, out_size, k)).astype(np.float32)
  out = blocks.mean(axis=(-3, -1))
  if np.issubdtype(images.dtype, np.integer):
    info = np.iinfo(images.dtype)
    out = np.clip(np.rint(out), info.min, info.max).astype(images.dtype)
  return out


def any_downsample(masks: np.ndarray, out_size: int) -> np.ndarray:
  """A coarse pixel is set if any fine pixel in its block is: punctate bleeds must not vanish."""
  h, w = masks.shape[-2:]
  if (h, w) == (out_size, out_size):
    return masks.astype(bool)
  k = _factor(h, out_size)
  blocks = masks.reshape(masks.shape[:-2] + (out_size, k, out_size, k))
  return blocks.any(axis=(-3, -1))
