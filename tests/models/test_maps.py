"""Sliding-window inference, morphological post-processing and slice scores on dense maps (seed 002 §5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ich_jax.grid import patch_starts
from ich_jax.models import maps


def test_sliding_window_averages_the_overlapping_windows():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 24, 20, 3)), jnp.float32)
  # A per-pixel model sees the same value in every window: the stitched map is the model on the whole image.
  pixelwise = lambda x: jax.nn.sigmoid(x[..., :1] * 2.0 - x[..., 1:2])
  np.testing.assert_allclose(maps.sliding_window(pixelwise, images, 8, 4), pixelwise(images), rtol=1e-6)
  # A model that knows where it is in its window: the map is the mean over the windows covering each pixel.
  row_in_window = lambda x: jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.float32)[None, :, None, None],
                                             x.shape[:3] + (1,))
  got = np.asarray(maps.sliding_window(row_in_window, images, (8, 6), (5, 4)))
  total, count = np.zeros((24, 20)), np.zeros((24, 20))
  for y in patch_starts(24, 8, 5):
    for x in patch_starts(20, 6, 4):
      total[y:y + 8, x:x + 6] += np.arange(8)[:, None]
      count[y:y + 8, x:x + 6] += 1
  np.testing.assert_allclose(got[0, ..., 0], total / count, rtol=1e-6)
  np.testing.assert_allclose(got[1], got[0])
  # In chunks of 5 windows (lax.map, padding the last chunk) and jitted: the same maps.
  chunked = maps.sliding_window_fn(row_in_window, (8, 6), (5, 4), max_patches=5)(images)
  np.testing.assert_allclose(chunked, got, rtol=1e-6)
  with pytest.raises(ValueError, match="apply_fn returned"):
    maps.sliding_window(lambda x: x[:, :4], images, 8, 4)


@pytest.mark.parametrize("closing,opening", [(10, 5), (3, 3), (0, 5)])
def test_close_open_on_probabilities_is_the_papers_binary_morphology_at_every_threshold(closing, opening):
  rng = np.random.default_rng(1)
  prob = ndimage.gaussian_filter(rng.random((40, 48)), 1.5)
  prob = (prob - prob.min()) / (prob.max() - prob.min())
  got = np.asarray(maps.close_open(jnp.asarray(prob[None, :, :, None], jnp.float32), closing, opening))[0, ..., 0]
  want = prob
  if closing > 1:
    want = ndimage.grey_closing(want, size=closing, mode="nearest")
  if opening > 1:
    want = ndimage.grey_opening(want, size=opening, mode="nearest")
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Threshold decomposition: thresholding the processed map = closing then opening the thresholded mask
  # (binary operations with the same square; compared away from the frame, where scipy's binary border
  # convention differs).
  se_c, se_o = np.ones((closing, closing), bool), np.ones((opening, opening), bool)
  m = max(closing, opening)
  for t in (0.5, 0.7, 0.9):
    mask = prob >= t
    if closing > 1:
      mask = ndimage.binary_closing(np.pad(mask, m, mode="edge"), se_c)[m:-m, m:-m]
    if opening > 1:
      mask = ndimage.binary_opening(np.pad(mask, m, mode="edge"), se_o)[m:-m, m:-m]
    inner = (slice(m, -m), slice(m, -m))
    np.testing.assert_array_equal((got >= np.float32(t))[inner], mask[inner])
    assert mask.any() or t == 0.9


def test_slice_score_is_the_kth_largest_pixel():
  rng = np.random.default_rng(2)
  prob = rng.random((3, 6, 5, 2)).astype(np.float32)
  np.testing.assert_array_equal(maps.slice_score(jnp.asarray(prob)), prob.max(axis=(1, 2)))
  kth = np.sort(prob.reshape(3, 30, 2), axis=1)[:, -4]
  np.testing.assert_array_equal(maps.slice_score(jnp.asarray(prob), 4), kth)
