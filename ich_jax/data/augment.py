"""Random 2D affine augmentation of one example (image channels and mask together).

One affine map per example: flip, then isotropic scale, shear, rotation about
the image centre, then shift. The image channels are resampled with linear
interpolation, the mask with nearest neighbour, both through the same matrix,
so blood stays where the image says it is. Labels are not touched (a large
shift can move a small bleed out of the frame; with the default magnitudes
that is rare and we accept it).

Which transforms the papers use differ, hence every one is switchable:
seed 003 (§2, 2D CNN training) uses random cropping, scaling, flipping and
rotation (a crop is a zoom-in plus a shift here, the output keeps its size); seed 002 (Methods, data augmentation) uses rotation <= 20 deg,
width/height shift, shear and zoom, and *no* flips, because all subjects lie
in the scanner facing the same way.

Coordinates are (row, col). A positive rotation is counter-clockwise on
screen, i.e. 90 deg equals `np.rot90`; `hflip` mirrors left-right
(`np.fliplr`), `vflip` top-bottom (`np.flipud`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np


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
  """3x3 homogeneous forward map, input (row, col) -> output (row, col).

  The fields of `params` may also be arrays over a batch ([B], shift [B, 2],
  `stack_params`): the maps are then [B, 3, 3], each bit for bit the map of
  its own parameters (the same numpy operations, broadcast).
  """
  flip = _matrix2(np.where(params.vflip, -1.0, 1.0), 0.0, 0.0, np.where(params.hflip, -1.0, 1.0))
  theta = np.deg2rad(params.rotation_deg)
  c, s = np.cos(theta), np.sin(theta)
  # (row, col) with row pointing down: this is counter-clockwise on screen.
  rotation = _matrix2(c, -s, s, c)
  shear = _matrix2(1.0, 0.0, np.tan(np.deg2rad(params.shear_deg)), 1.0)
  linear = rotation @ shear @ (np.asarray(params.scale)[..., None, None] * np.eye(2)) @ flip
  centre = (np.asarray(shape[:2], np.float64) - 1.0) / 2.0
  out = np.broadcast_to(np.eye(3), linear.shape[:-2] + (3, 3)).copy()
  out[..., :2, :2] = linear
  out[..., :2, 2] = centre + np.asarray(params.shift, np.float64) - linear @ centre
  return out


def _matrix2(a, b, c, d) -> np.ndarray:
  """[[a, b], [c, d]] with the entries broadcast over a batch: [..., 2, 2] float64."""
  a, b, c, d = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (a, b, c, d)))
  return np.stack([np.stack([a, b], -1), np.stack([c, d], -1)], -2)


def stack_params(params) -> AffineParams:
  """Examples' AffineParams → one AffineParams of arrays over the batch (for `affine_matrix`)."""
  return AffineParams(**{f.name: np.array([getattr(p, f.name) for p in params])
                         for f in dataclasses.fields(AffineParams)})


def _snap(x: np.ndarray) -> np.ndarray:
  # cos(90 deg) is 6e-17, not 0; snapping keeps right-angle maps and flips
  # bit-exact instead of blending 1e-16 of a neighbour or of the fill.
  r = np.round(x)
  return np.where(np.abs(x - r) < 1e-9, r, x)


@functools.lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  rows, cols = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                           indexing="ij")
  rows.flags.writeable = cols.flags.writeable = False
  return rows.ravel(), cols.ravel()


def _source_coords(inverse: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  rows, cols = _grid(tuple(shape))
  r = inverse[0, 0] * rows + inverse[0, 1] * cols + inverse[0, 2]
  c = inverse[1, 0] * rows + inverse[1, 1] * cols + inverse[1, 2]
  return r, c


def _warp_linear(image: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
  """Bilinear samples of image [H, W, C] at (r, c).

  Neighbours off the grid read the channel's minimum (air is the lowest value
  under every window and under clip_rescale). Works on one padded plane per
  channel: gathers from contiguous planes are ~3x faster than from [H, W, C].
  """
  h, w, ch = image.shape
  planes = np.ascontiguousarray(np.moveaxis(image, -1, 0))
  flat = planes.reshape(ch, -1)
  fill, top = flat.min(axis=1), flat.max(axis=1)
  # One ring of fill around the grid; sample points are clipped into [-1, size],
  # so anything outside reads the ring.
  padded = np.empty((ch, h + 2, w + 2), image.dtype)
  padded[:] = fill[:, None, None]
  padded[:, 1:-1, 1:-1] = planes
  padded = padded.reshape(ch, -1)
  r = np.clip(r, -1.0, h)
  c = np.clip(c, -1.0, w)
  r0 = np.minimum(np.floor(r), h - 1)
  c0 = np.minimum(np.floor(c), w - 1)
  fr = (r - r0).astype(np.float32)
  fc = (c - c0).astype(np.float32)
  stride = w + 2
  i00 = ((r0 + 1) * stride + c0 + 1).astype(np.intp)
  w00, w01 = (1 - fr) * (1 - fc), (1 - fr) * fc
  w10, w11 = fr * (1 - fc), fr * fc
  out = np.empty((h * w, ch), np.float32)
  for k in range(ch):
    p = padded[k]
    v = p[i00] * w00 + p[i00 + 1] * w01 + p[i00 + stride] * w10 + p[i00 + stride + 1] * w11
    # Rounding in the weights can overshoot by an ulp; keep windows inside [0, 1].
    out[:, k] = np.clip(v, fill[k], top[k], out=v)
  return out.reshape(h, w, ch)


def _warp_nearest(mask: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
  """Nearest-neighbour samples of mask [H, W] at (r, c); off the grid reads 0."""
  h, w = mask.shape
  padded = np.zeros((h + 2, w + 2), mask.dtype)
  padded[1:-1, 1:-1] = mask
  ri = np.clip(np.rint(r), -1, h).astype(np.intp) + 1
  ci = np.clip(np.rint(c), -1, w).astype(np.intp) + 1
  return padded.ravel()[ri * (w + 2) + ci].reshape(h, w)


def warped_spacing(pixel_spacing, matrix: np.ndarray) -> np.ndarray:
  """Pixel spacing after the warp: divided by the map's scale, so physical areas stay right.

  Batches too: pixel_spacing [B, 2] and matrix [B, 3, 3].
  """
  scale = np.sqrt(abs(np.linalg.det(matrix[..., :2, :2])))
  return (np.asarray(pixel_spacing) / np.asarray(scale)[..., None]).astype(np.float32)


def apply_affine(example: dict, matrix: np.ndarray) -> dict:
  """Warps `image` [H, W, C] (linear) and `mask` [H, W] (nearest) by a forward affine map.

  Outside the input, the image is filled with each channel's minimum and the
  mask with 0 (as scipy.ndimage.affine_transform with mode="grid-constant").
  `pixel_spacing`, if present, is divided by the scale (`warped_spacing`).
  """
  image = np.asarray(example["image"])
  r, c = _source_coords(_snap(np.linalg.inv(matrix)), image.shape[:2])
  out = dict(example)
  out["image"] = _warp_linear(image, r, c).astype(image.dtype, copy=False)
  if "mask" in example:
    out["mask"] = _warp_nearest(np.asarray(example["mask"]), r, c)
  if "pixel_spacing" in example:
    out["pixel_spacing"] = warped_spacing(example["pixel_spacing"], matrix)
  return out


def random_matrix(rng: np.random.Generator, cfg: Any, shape: tuple[int, int]) -> np.ndarray | None:
  """One example's random forward map for an image of `shape`, or None where it is the identity.

  `cfg` is `config.data.augment` and must be enabled. Draws the same random
  numbers whatever the result, so host and on-device augmentation see the same
  maps for the same stream position.
  """
  matrix = affine_matrix(sample_params(rng, cfg, shape), shape)
  return None if is_identity(matrix) else matrix


def is_identity(matrix: np.ndarray) -> np.ndarray:
  """Whether each [..., 3, 3] map is the identity: np.allclose(m, I, rtol=0, atol=1e-12), at a tenth of its cost."""
  return np.abs(matrix - _EYE).max(axis=(-2, -1)) <= 1e-12


_EYE = np.eye(3)


def random_matrices(rngs, cfg: Any, shape: tuple[int, int]) -> np.ndarray:
  """`random_matrix` for a batch: [B, 3, 3], exactly the identity where random_matrix returns None.

  `rngs` yields each example's generator in turn. The same draws and bit for
  bit the same maps as one `random_matrix` call per example, at about a
  fifth of the cost (docs/PERFORMANCE.md, Input pipeline).
  """
  matrices = affine_matrix(stack_params([sample_params(rng, cfg, shape) for rng in rngs]), shape)
  matrices[is_identity(matrices)] = _EYE
  return matrices


def augment(example: dict, rng: np.random.Generator, cfg: Any) -> dict:
  """Random affine augmentation; `cfg` is `config.data.augment` (see config_defaults.default_data_config)."""
  if not cfg.enabled:
    return example
  matrix = random_matrix(rng, cfg, np.shape(example["image"])[:2])
  return example if matrix is None else apply_affine(example, matrix)


def source_terms(matrix: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
  """float32 [2, H + W]: output pixel (i, j) samples the input at terms[:, i] + terms[:, H + j].

  The inverse of the forward map `matrix` (None: the identity), split into a
  row part (with the offset) and a column part, each computed in float64 and
  rounded once. This is how the map travels to the on-device warp
  (`ich_jax.data.on_device`): 8·(H + W) bytes per example, and a coordinate is
  one float32 addition there. Computing it on the device instead as
  a·i + b·j + e lets XLA:CPU contract it into an FMA in one fused kernel and
  not in another, so a pixel's floor and its fraction could disagree by a whole
  pixel (measured: up to 311 HU off near integer coordinates).
  `matrix` may be a batch [B, 3, 3] (terms [B, 2, H + W]).
  """
  h, w = shape
  inverse = np.eye(3) if matrix is None else _snap(np.linalg.inv(matrix))
  rows = inverse[..., :2, 0:1] * np.arange(h) + inverse[..., :2, 2:3]
  cols = inverse[..., :2, 1:2] * np.arange(w)
  return np.concatenate([rows, cols], axis=-1).astype(np.float32)
