"""In-plane resampling at load time against `jax.image.resize`."""

import numpy as np
import pytest

from ich_jax.data import resample


def test_resize_matches_jax_image_resize():
  jax = pytest.importorskip("jax")
  rng = np.random.default_rng(0)
  ex = {"image": rng.random((32, 32, 3)).astype(np.float32),
        "mask": rng.integers(0, 6, (32, 32)).astype(np.uint8),
        "pixel_spacing": np.array([0.4, 0.5], np.float32)}
  for size in (8, 13, 48):
    out = resample.resize(ex, size)
    ref = jax.image.resize(ex["image"], (size, size, 3), "linear")
    np.testing.assert_allclose(out["image"], np.asarray(ref), atol=1e-5)
    ref_mask = jax.image.resize(ex["mask"], (size, size), "nearest")
    np.testing.assert_array_equal(out["mask"], np.asarray(ref_mask))
    np.testing.assert_allclose(out["pixel_spacing"], [0.4 * 32 / size, 0.5 * 32 / size], rtol=1e-6)


def test_scale_boxes_maps_pixel_edges_exactly_as_the_resize_moves_pixels():
  # A detector's box on its 64² input, back on a 128 × 96 slice: rows × 2, columns × 1.5, by hand.
  box = np.array([8.0, 4.0, 16.0, 20.0], np.float32)
  np.testing.assert_array_equal(resample.scale_boxes(box, (64, 64), (128, 96)), [16.0, 6.0, 32.0, 30.0])
  np.testing.assert_array_equal(resample.scale_boxes([[16.0, 6.0, 32.0, 30.0]], (128, 96), (64, 64)), [box])
  # The pixels a box covers on the input are the pixels the nearest-neighbour upsampling (predict's
  # `upsample_mask`) gives the native slice: the mapped box bounds them exactly.
  small = np.zeros((64, 64), np.uint8)
  small[8:16, 4:20] = 1
  rows, cols = resample.nearest_rows(64, 128), resample.nearest_rows(64, 96)
  big = small[rows][:, cols]
  r, c = np.flatnonzero(big.any(axis=1)), np.flatnonzero(big.any(axis=0))
  np.testing.assert_array_equal([r[0], c[0], r[-1] + 1, c[-1] + 1], [16, 6, 32, 30])
  # The resize's own box scaling (CQ500's BHX boxes) is the same map.
  ex = {"image": np.zeros((128, 96, 1), np.float32), "boxes": np.array([[16.0, 6.0, 32.0, 30.0]], np.float32)}
  np.testing.assert_array_equal(resample.resize(ex, 64)["boxes"], [box])
