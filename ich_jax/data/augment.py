"""Random 2D affine augmentation of one example (image channels and mask together).

One affine map per example: flip, then isotropic scale, shear, rotation about
the image centre, then shift. The image channels are resampled with linear
interpolation, the mask with nearest neighbour, both through the same matrix,
so blood stays where the image says it is. Labels are not touched (a large
shift can move a small bleed out of the frame; with the default magnitudes
that is rare and we accept it).

Which transforms the papers use differ, hence every one is switchable:
seed 003 (§2, 2D CNN training) uses random cropping, scaling, flipping and
rotation; seed 002 (Methods, data augmentation) uses rotation <= 20 deg,
width/height shift, shear and zoom, and *no* flips, because all subjects lie
in the scanner facing the same way.

Coordinates are (row, col). A positive rotation is counter-clockwise on
screen, i.e. 90 deg equals `np.rot90`; `hflip` mirrors left-right
(`np.fliplr`), `vflip` top-bottom (`np.flipud`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AffineParams:
  rotation_deg: float = 0.0
  shift: tuple[float, float] = (0.0, 0.0)  # (rows, cols) in pixels
  scale: float = 1.0
  shear_deg: float = 0.0
  hflip: bool = False
  vflip: bool = False


def sample_params(rng: np.random.Generator, cfg: Any, shape: tuple[int, int]) -> AffineParams:
  """Draws one example's parameters.

  Every random number is drawn whether or not its transform is enabled, so
  switching one transform off does not change what the others draw.
  """
  rot, shear, scale_u, flip_h, flip_v = rng.random(5)
  shift_u = rng.random(2)
  lo, hi = cfg.scale_range
  return AffineParams(
      rotation_deg=float(cfg.rotation_deg) * (2.0 * rot - 1.0),
      shift=tuple(float(cfg.shift_frac) * (2.0 * shift_u[i] - 1.0) * shape[i] for i in range(2)),
      scale=float(lo + (hi - lo) * scale_u),
      shear_deg=float(cfg.shear_deg) * (2.0 * shear - 1.0),
      hflip=bool(cfg.hflip) and flip_h < 0.5,
      vflip=bool(cfg.vflip) and flip_v < 0.5,
  )


def affine_matrix(params: AffineParams, shape: tuple[int, int]) -> np.ndarray:
  """3x3 homogeneous forward map, input (row, col) -> output (row, col)."""
  flip = np.diag([-1.0 if params.vflip else 1.0, -1.0 if params.hflip else 1.0])
  theta = np.deg2rad(params.rotation_deg)
  c, s = np.cos(theta), np.sin(theta)
  # (row, col) with row pointing down: this is counter-clockwise on screen.
  rotation = np.array([[c, -s], [s, c]])
  shear = np.array([[1.0, 0.0], [np.tan(np.deg2rad(params.shear_deg)), 1.0]])
  linear = rotation @ shear @ (params.scale * np.eye(2)) @ flip
  centre = (np.asarray(shape[:2], np.float64) - 1.0) / 2.0
  out = np.eye(3)
  out[:2, :2] = linear
  out[:2, 2] = centre + np.asarray(params.shift, np.float64) - linear @ centre
  return out


def _snap(x: np.ndarray) -> np.ndarray:
  # cos(90 deg) is 6e-17, not 0; snapping keeps right-angle maps exact, so a
  # border pixel is not pushed a hair outside the grid and replaced by fill.
  r = np.round(x)
  return np.where(np.abs(x - r) < 1e-9, r, x)


def apply_affine(example: dict, matrix: np.ndarray) -> dict:
  """Warps `image` [H, W, C] (linear) and `mask` [H, W] (nearest) by a forward affine map.

  Outside the input, the image is filled with each channel's minimum (air is the
  lowest value under every window and under clip_rescale) and the mask with 0.
  `pixel_spacing`, if present, is divided by the scale so physical areas stay right.
  """
  image = np.asarray(example["image"])
  inverse = _snap(np.linalg.inv(matrix))
  lin, off = inverse[:2, :2], inverse[:2, 2]
  out = dict(example)
  channels = [
      ndimage.affine_transform(image[..., ch], lin, offset=off, order=1, mode="constant",
                               cval=float(image[..., ch].min()))
      for ch in range(image.shape[-1])
  ]
  out["image"] = np.stack(channels, axis=-1).astype(image.dtype, copy=False)
  if "mask" in example:
    mask = np.asarray(example["mask"])
    out["mask"] = ndimage.affine_transform(mask, lin, offset=off, order=0, mode="constant", cval=0)
  if "pixel_spacing" in example:
    scale = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    out["pixel_spacing"] = (np.asarray(example["pixel_spacing"]) / scale).astype(np.float32)
  return out


def augment(example: dict, rng: np.random.Generator, cfg: Any) -> dict:
  """Random affine augmentation; `cfg` is `config.data.augment` (see pipeline.default_data_config)."""
  if not cfg.enabled:
    return example
  shape = np.shape(example["image"])[:2]
  matrix = affine_matrix(sample_params(rng, cfg, shape), shape)
  if np.allclose(matrix, np.eye(3), rtol=0.0, atol=1e-12):
    return example
  return apply_affine(example, matrix)
