"""Dense probability maps at inference: sliding-window prediction, morphological post-processing, slice scores.

All pure JAX over static shapes, so they compose inside a jitted predict step
(`ich_jax.train.segmentation`) or run on their own (`sliding_window_fn`).

Sliding window (seed 002 §5: "each slice ... was first divided using 160 × 160
window with an stride 80. This process resulted in 49 overlapped windows ...
combined to produce full 640 × 640 ICH masks"; its public code averages the
overlapping windows' probabilities, 128 × 128 with stride 64 on the 512 × 512
NIfTI slices). `ich_jax.grid.patch_starts` puts windows every `stride` pixels
and one more flush with the far edge when the grid does not end there, so every
pixel is covered; `sliding_window` runs all windows of a batch through the model at
once (or `max_patches` at a time) and averages where they overlap.

Morphology (seed 002 §5: "closing to fill in the gaps in the ICH regions and
opening to remove outliers"; the public code: 10 × 10 closing then 5 × 5
opening of the mask thresholded at 0.5). Flat (square) structuring elements
commute with thresholding, so `close_open` is applied to the probability map
itself (grey-level: dilation = max, erosion = min over the square): the map
thresholded at t afterwards is exactly the thresholded-at-t mask closed then
opened, for every t at once. Out-of-frame pixels are ignored, which for max
and min equals scipy.ndimage's mode="nearest"; the square's centre is at
index size // 2 as in scipy (`grey_closing` / `grey_opening` give the same
maps, tested), which matters only for even sizes.

Slice score (`slice_score`): the k-th largest pixel of a map. k = 1 is seed
000 §2.2.4's max[HemorrhageSlice]; larger k is seed 002's public-code rule of
calling a slice positive only when enough pixels are blood (`np.sum(mask) >
20*20`: a count over the slice, so no connected components are needed). On a
post-processed map, score ≥ t ⇔ at least k pixels survive thresholding at t
and the morphology, so seed 002 Table 6's threshold sweep reads it directly.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ich_jax.grid import as_pair, patch_grid


def sliding_window(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array, patch, stride, *,
                   max_patches: int | None = None) -> jax.Array:
  """Maps [B, H, W, K] of `apply_fn` over overlapping windows of `images` [B, H, W, C], averaged where they overlap.

  `apply_fn` takes windows [N, ph, pw, C] and returns [N, ph, pw, K] (give it
  probabilities, not logits, to average as seed 002 does). All windows of the
  batch (B × windows) go through it in one call, or in chunks of `max_patches`
  (`jax.lax.map`, bounding memory for large slices on small devices).
  """
  b, h, w, c = images.shape
  (ph, pw) = as_pair(patch, "patch")
  grid = patch_grid((h, w), patch, stride)
  windows = jnp.stack([images[:, y:y + ph, x:x + pw] for y, x in grid], axis=1)   # [B, P, ph, pw, C]
  flat = windows.reshape((b * len(grid), ph, pw, c))
  if max_patches is None or max_patches >= len(flat):
    out = apply_fn(flat)
  else:
    n = -(-len(flat) // max_patches)
    padded = jnp.concatenate([flat, jnp.zeros((n * max_patches - len(flat),) + flat.shape[1:], flat.dtype)])
    out = jax.lax.map(apply_fn, padded.reshape((n, max_patches) + flat.shape[1:]))
    out = out.reshape((n * max_patches,) + out.shape[2:])[:len(flat)]
  if out.shape[:3] != (len(flat), ph, pw):
    raise ValueError(f"sliding_window: apply_fn returned {out.shape} for windows {flat.shape}; expected "
                     f"[{len(flat)}, {ph}, {pw}, K]")
  out = out.reshape((b, len(grid)) + out.shape[1:])
  total = jnp.zeros((b, h, w, out.shape[-1]), jnp.float32)
  count = np.zeros((h, w), np.float32)
  for i, (y, x) in enumerate(grid):
    total = total.at[:, y:y + ph, x:x + pw].add(out[:, i].astype(jnp.float32))
    count[y:y + ph, x:x + pw] += 1
  return total / jnp.asarray(count)[None, :, :, None]


def sliding_window_fn(apply_fn: Callable[[jax.Array], jax.Array], patch, stride, *,
                      max_patches: int | None = None) -> Callable[[jax.Array], jax.Array]:
  """`jax.jit(images → sliding_window(apply_fn, images, patch, stride))`: one compile per image shape."""
  return jax.jit(lambda images: sliding_window(apply_fn, images, patch, stride, max_patches=max_patches))


def _window(x: jax.Array, size: int, reduce: str) -> jax.Array:
  """Max or min of [B, H, W, K] over a size × size square per pixel, out-of-frame pixels ignored.

  The square B covers offsets -size//2 … size-1-size//2; erosion takes the min over p + B, dilation the
  max over p − B (the reflected square), so that closing and opening keep objects in place.
  """
  if size <= 1:
    return x
  a, c = size // 2, size - 1 - size // 2
  if reduce == "max":
    init, op, (before, after) = -jnp.inf, jax.lax.max, (c, a)
  else:
    init, op, (before, after) = jnp.inf, jax.lax.min, (a, c)
  return jax.lax.reduce_window(x, jnp.asarray(init, x.dtype), op, (1, size, size, 1), (1, 1, 1, 1),
                               ((0, 0), (before, after), (before, after), (0, 0)))


def dilate(x: jax.Array, size: int) -> jax.Array:
  return _window(x, size, "max")


def erode(x: jax.Array, size: int) -> jax.Array:
  return _window(x, size, "min")


def close_open(prob: jax.Array, closing: int, opening: int) -> jax.Array:
  """Seed 002's post-processing of maps [B, H, W, K]: closing (size `closing`), then opening (size `opening`).

  Size 0 or 1 skips that operation. A grey-level operation on probabilities; see the module docstring
  for why thresholding afterwards equals the paper's binary operations on the thresholded mask.
  """
  x = prob.astype(jnp.float32)
  if closing > 1:
    x = erode(dilate(x, closing), closing)
  if opening > 1:
    x = dilate(erode(x, opening), opening)
  return x


def slice_score(prob: jax.Array, min_pixels: int = 1) -> jax.Array:
  """[B, H, W, K] → [B, K]: the `min_pixels`-th largest pixel of each map (1: the maximum)."""
  if min_pixels <= 1:
    return prob.max(axis=(1, 2))
  b, h, w, k = prob.shape
  flat = jnp.moveaxis(prob, -1, 1).reshape(b, k, h * w)
  return jax.lax.top_k(flat, int(min_pixels))[0][..., -1]
