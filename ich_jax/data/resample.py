"""In-plane resampling of slices: the pipeline's resize at load time, and the builders' downsampling at build time.

Load time (`resize`, `resize_mask`): any ratio, the image bilinear with the
kernel of `jax.image.resize(method="linear")` (antialiased when shrinking), the
mask nearest neighbour; `ich_jax.data.on_device` applies the same weights on
the accelerator. Build time (`area_downsample`, `any_downsample`): builders
resize stored slices once, by integer factors.
"""
from __future__ import annotations

import functools

import numpy as np

# --- Load time: any ratio ------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] bilinear resampling matrix, half-pixel centres, antialiased when shrinking.

  Same kernel as `jax.image.resize(method="linear")`: a triangle, widened by
  in/out when downsampling so every input pixel contributes (plain bilinear
  sampling of every 4th pixel would alias thin structures such as a
  subdural rim).
  """
  scale = out_size / in_size
  kernel_scale = min(scale, 1.0)
  centres = (np.arange(out_size) + 0.5) / scale - 0.5
  x = np.arange(in_size)
  w = np.maximum(0.0, 1.0 - np.abs(x[None, :] - centres[:, None]) * kernel_scale)
  w /= w.sum(axis=1, keepdims=True)
  return w.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """`linear_weights` as taps: (input index [out, T], weight [out, T]) over each output's contiguous support.

  The triangle is T ≈ 2·in/out pixels wide, so T multiply-adds per output pixel
  replace a dense matrix product over all `in_size` inputs (64× fewer for 512 → 128).
  """
  w = linear_weights(in_size, out_size)
  nonzero = w > 0
  first = nonzero.argmax(axis=1)
  last = in_size - 1 - nonzero[:, ::-1].argmax(axis=1)
  index = first[:, None] + np.arange(int((last - first).max()) + 1)
  inside = index < in_size
  index = np.minimum(index, in_size - 1)
  return index, np.where(inside, np.take_along_axis(w, index, axis=1), 0.0).astype(np.float32)


def _resample_rows(x: np.ndarray, out_size: int) -> np.ndarray:
  """[in, ...] → [out, ...] along the first axis with the `linear_weights` kernel."""
  index, weight = _linear_taps(x.shape[0], out_size)
  shape = (-1,) + (1,) * (x.ndim - 1)
  out = weight[:, 0].reshape(shape) * x[index[:, 0]]
  for t in range(1, index.shape[1]):
    out += weight[:, t].reshape(shape) * x[index[:, t]]
  return out


def nearest_rows(in_size: int, out_size: int) -> np.ndarray:
  """The input row (or column) each of `out_size` outputs copies: nearest neighbour at half-pixel centres."""
  return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64), in_size - 1)


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
  """A label map [H, W] at image_size² by nearest neighbour, as `resize` does to `mask`."""
  mask = np.asarray(mask)
  h, w = mask.shape[:2]
  if (h, w) == (image_size, image_size):
    return mask
  return mask[nearest_rows(h, image_size)][:, nearest_rows(w, image_size)]


def resize(example: dict, image_size: int) -> dict:
  """Resizes `image` (bilinear) and `mask` / `brain_mask` (nearest) to image_size², adjusting `pixel_spacing`
  and scaling `boxes` (CQ500's BHX boxes) where present."""
  image = example["image"]
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return example
  out = dict(example)
  out["image"] = resize_image(image, image_size)
  for key in ("mask", "brain_mask"):
    if key in example:
      out[key] = resize_mask(example[key], image_size)
  if "pixel_spacing" in example:
    out["pixel_spacing"] = resized_spacing(example["pixel_spacing"], (h, w), image_size)
  if "boxes" in example:
    # CQ500's BHX boxes (row0, col0, row1, col1 in stored pixels) follow the image.
    out["boxes"] = scale_boxes(example["boxes"], (h, w), (image_size, image_size)).astype(np.float32)
  return out


def scale_boxes(boxes, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
  """Boxes [..., 4] (y1, x1, y2, x2 on pixel edges) of an [H, W] slice → the same boxes once the slice is
  resized to `to_shape` (float64).

  Exact for `resize`'s half-pixel-centre grid: pixel edge e of H maps to edge e·H'/H, whichever way the
  resize goes, so a detector's boxes on its input map back to the stored slice by the inverse ratio.
  """
  factor = np.array([to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]] * 2)
  return np.asarray(boxes, np.float64) * factor


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
  """[H, W, C] → float32 [S, S, C] with the `linear_weights` kernel, clipped to the input's range."""
  rows = _resample_rows(np.asarray(image, np.float32), image_size)                   # [size, w, c]
  resized = np.ascontiguousarray(_resample_rows(rows.transpose(1, 0, 2), image_size).transpose(1, 0, 2))
  # The weights are positive and sum to 1 up to rounding: clip the ulp overshoot
  # so windowed channels stay inside [0, 1].
  return np.clip(resized, image.min(), image.max(), out=resized)


def resized_spacing(pixel_spacing, shape: tuple[int, int], image_size: int) -> np.ndarray:
  """The (row, col) pixel spacing of a slice of `shape` once resized to image_size²."""
  factor = np.array([shape[0] / image_size, shape[1] / image_size], np.float32)
  return (np.asarray(pixel_spacing, np.float32) * factor).astype(np.float32)


# --- Build time: integer factors -----------------------------------------------------


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
