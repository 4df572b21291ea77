"""Build-time resizing of slices to the config's stored resolution (once, here, not at every read)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ich_jax.data import resample

AIR_HU = -1024


@dataclasses.dataclass(frozen=True)
class Fit:
  """How a slice of `shape` maps to the stored size×size: pad to square, then scale."""
  shape: tuple[int, int]
  size: int

  @property
  def side(self) -> int:
    return max(self.shape)

  @property
  def offset(self) -> tuple[int, int]:
    """Rows, columns of padding before the image (centred)."""
    return ((self.side - self.shape[0]) // 2, (self.side - self.shape[1]) // 2)

  @property
  def scale(self) -> float:
    """Stored pixels per original pixel."""
    return self.size / self.side

  def spacing(self, pixel_spacing) -> np.ndarray:
    return (np.asarray(pixel_spacing, np.float64) / self.scale).astype(np.float32)

  def point(self, row: float, col: float) -> tuple[float, float]:
    """An original pixel coordinate (row, col; pixel edges) in stored pixels."""
    return ((row + self.offset[0]) * self.scale, (col + self.offset[1]) * self.scale)

  def _pad(self, a: np.ndarray, fill) -> np.ndarray:
    if self.shape[0] == self.shape[1]:
      return a
    out = np.full(a.shape[:-2] + (self.side, self.side), fill, a.dtype)
    r, c = self.offset
    out[..., r:r + self.shape[0], c:c + self.shape[1]] = a
    return out

  def image(self, hu: np.ndarray) -> np.ndarray:
    """HU [..., H, W] → int16 [..., size, size]: block mean for integer factors (partial volume), else linear."""
    a = self._pad(np.asarray(hu), AIR_HU)
    if self.side == self.size:
      out = a
    elif self.side % self.size == 0:
      out = resample.area_downsample(a.astype(np.float32), self.size)
    else:
      out = _zoom(a.astype(np.float32), self.size, order=1)
    info = np.iinfo(np.int16)
    return np.clip(np.rint(out), info.min, info.max).astype(np.int16)

  def mask(self, blood: np.ndarray) -> np.ndarray:
    """Boolean [..., H, W] → [..., size, size]: a stored pixel is blood if any original pixel in it is."""
    a = self._pad(np.asarray(blood, bool), False)
    if self.side == self.size:
      return a
    if self.side % self.size == 0:
      return resample.any_downsample(a, self.size)
    return _zoom(a.astype(np.float32), self.size, order=1) > 0


def _zoom(a: np.ndarray, size: int, order: int) -> np.ndarray:
  from scipy import ndimage

  zoom = (1,) * (a.ndim - 2) + (size / a.shape[-2], size / a.shape[-1])
  return ndimage.zoom(a, zoom, order=order, mode="nearest", grid_mode=True)
