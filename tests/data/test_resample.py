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
