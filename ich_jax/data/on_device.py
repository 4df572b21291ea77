"""The slice pipeline's last steps inside the jitted train step (`config.data.preprocess_on`).

On the host, warping a slice (numpy, bilinear over every pixel) costs more
than reading it, and a float32 3-window slice is six times the bytes of its
int16 HU. With `config.data.preprocess_on = "device"` ("auto" on an
accelerator) the training batches leave the host as

  hu     int16 [B, H, W, K]   the stored HU slices, one plane per distinct
                              recipe offset (`windows.recipe_offsets`, sorted)
  warp   float32 [B, 2, H+W]  with augmentation: each example's affine map
                              (`augment.source_terms`), drawn on the host from
                              the same stream-position-keyed RNG as the host warp
  mask   uint8 [B, H, W]      as stored, unwarped (when the task reads it)
  hu_window float32 [B, K, 2] with intensity "dicom_window": each plane's DICOM
                              header window (center, width)

and `TrainFinish` turns them into the usual `image` float32 [B, S, S, C] and
`mask` [B, S, S] on the accelerator: bilinear warp of the HU (each plane's
minimum outside the frame), nearest-neighbour warp of the mask (0 outside),
the recipe's windows or clip_rescale, then the resize to `image_size`. The
arithmetic is the host pipeline's (`augment._warp_linear`, `windows`,
`resample.resize`) in float32: windows agree with the host's within one ulp,
warped HU within ~0.02 HU (float32 vs float64 sample coordinates), the mask
exactly except where a coordinate rounds across a .5 tie. Evaluation batches
are built on the host either way, and so are training batches whose inputs need
skull stripping (scipy morphology: `windows.CHANNEL_OPS`, `config.data.brain_mask`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ich_jax.data import resample, slice_plan, windows


def _corner(x: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Sample coordinate → (index of the lower neighbour in the padded grid, fraction), as `augment._warp_linear`."""
  x = jnp.clip(x, -1.0, size)
  x0 = jnp.minimum(jnp.floor(x), size - 1)
  return x0.astype(jnp.int32) + 1, x - x0


def _coordinates(warp: jax.Array, h: int) -> tuple[jax.Array, jax.Array]:
  """[2, H + W] source terms → source rows, cols [H, W]: one float32 addition each (see augment.source_terms)."""
  return warp[0, :h, None] + warp[0, None, h:], warp[1, :h, None] + warp[1, None, h:]


def _warp_plane(plane: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
  """Bilinear samples of one [H, W] plane; off the grid reads the plane's minimum."""
  h, w = plane.shape
  fill, top = plane.min(), plane.max()
  flat = jnp.pad(plane, 1, constant_values=fill).reshape(-1)
  (r0, fr), (c0, fc) = _corner(r, h), _corner(c, w)
  stride = w + 2
  i00 = r0 * stride + c0
  at = lambda i: flat.at[i].get(mode="promise_in_bounds")  # indices are clipped into the padded grid
  w00, w01 = (1 - fr) * (1 - fc), (1 - fr) * fc
  w10, w11 = fr * (1 - fc), fr * fc
  value = at(i00) * w00 + at(i00 + 1) * w01 + at(i00 + stride) * w10 + at(i00 + stride + 1) * w11
  # Rounding in the weights can overshoot by an ulp; keep windows inside [0, 1].
  return jnp.clip(value, fill, top)


def _warp_example(planes: jax.Array, warp: jax.Array) -> jax.Array:
  h = planes.shape[0]
  r, c = _coordinates(warp, h)
  return jnp.stack([_warp_plane(planes[..., k], r, c) for k in range(planes.shape[-1])], axis=-1)


def warp_linear(planes: jax.Array, warp: jax.Array) -> jax.Array:
  """Bilinear warp of [B, H, W, K] float planes by per-example source terms [B, 2, H + W]."""
  return jax.vmap(_warp_example)(planes, warp)


def _warp_mask_example(mask: jax.Array, warp: jax.Array) -> jax.Array:
  h, w = mask.shape
  r, c = _coordinates(warp, h)
  flat = jnp.pad(mask, 1).reshape(-1)
  # jnp.round rounds half to even, as np.rint in augment._warp_nearest.
  ri = jnp.clip(jnp.round(r), -1, h).astype(jnp.int32) + 1
  ci = jnp.clip(jnp.round(c), -1, w).astype(jnp.int32) + 1
  return flat.at[ri * (w + 2) + ci].get(mode="promise_in_bounds")


def warp_nearest(mask: jax.Array, warp: jax.Array) -> jax.Array:
  """Nearest-neighbour warp of [B, H, W] label maps; off the grid reads 0."""
  return jax.vmap(_warp_mask_example)(mask, warp)


def channels(hu: jax.Array, plan, offsets: Sequence[int], hu_window: jax.Array | None = None) -> jax.Array:
  """[B, H, W, K] HU planes (in `offsets` order; `hu_window` [B, K, 2] their header windows, for intensity
  "dicom_window") → [B, H, W, C] float32 channels of the plan's recipe."""
  planes = {int(o): hu[..., k] for k, o in enumerate(offsets)}
  if plan.intensity == "window":
    out = [windows.apply_window(planes[int(o)], level, width) for o, level, width, _ in plan.recipe]
  elif plan.intensity == "dicom_window":
    k = {int(o): i for i, o in enumerate(offsets)}
    out = [windows.apply_dicom_window(planes[int(o)], hu_window[:, k[int(o)]], level, width, xp=jnp)
           for o, level, width, _ in plan.recipe]
  else:
    out = [windows.clip_rescale(planes[int(o)], *plan.clip_range, *plan.clip_out_range) for o, _, _, _ in plan.recipe]
  return jnp.stack(out, axis=-1)


def resize(image: jax.Array, mask: jax.Array | None, size: int) -> tuple[jax.Array, jax.Array | None]:
  """`resample.resize` on a batch: the same antialiased bilinear weights, nearest mask, clipped per example."""
  _, h, w, _ = image.shape
  if (h, w) == (size, size):
    return image, mask
  wy, wx = resample.linear_weights(h, size), resample.linear_weights(w, size)
  out = jnp.einsum("jw,bhwc->bhjc", wx, jnp.einsum("ih,bhwc->biwc", wy, image))
  out = jnp.clip(out, image.min(axis=(1, 2, 3), keepdims=True), image.max(axis=(1, 2, 3), keepdims=True))
  if mask is not None:
    mask = mask[:, resample.nearest_rows(h, size)][:, :, resample.nearest_rows(w, size)]
  return out, mask


class TrainFinish:
  """The on-device half of the training pipeline for `config.data` (see the module docstring)."""

  def __init__(self, data_config):
    self.plan = slice_plan.from_config(data_config)
    self.offsets = self.plan.offsets

  def host_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
    """The host batch fields to place on devices for a task that reads `keys`."""
    inputs = ("hu", "warp") if self.plan.augment.enabled else ("hu",)
    if self.plan.intensity == "dicom_window":
      inputs += ("hu_window",)
    return tuple(k for key in keys for k in (inputs if key == "image" else (key,)))

  def __call__(self, batch: dict) -> dict:
    out = {k: v for k, v in batch.items() if k not in ("hu", "warp", "hu_window")}
    hu = batch["hu"].astype(jnp.float32)
    mask = batch.get("mask")
    if "warp" in batch:
      hu = warp_linear(hu, batch["warp"])
      if mask is not None:
        mask = warp_nearest(mask, batch["warp"])
    image, mask = resize(channels(hu, self.plan, self.offsets, batch.get("hu_window")), mask, self.plan.image_size)
    out["image"] = image
    if mask is not None:
      out["mask"] = mask
    return out
