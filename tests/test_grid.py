"""The windows a slice is cut into (seed 002 §5) and the gaps between the slices of a series (seed 003 §2)."""
import jax.numpy as jnp
import numpy as np
import pytest

from ich_jax import grid


def test_window_grids_of_the_paper_and_its_public_code():
  # Seed 002: 640² slices in 160² windows at stride 80 and the public code's 512² in 128² at 64: 7 × 7 = 49 each.
  assert grid.patch_starts(640, 160, 80) == (0, 80, 160, 240, 320, 400, 480)
  assert len(grid.patch_grid((512, 512), 128, 64)) == 49
  # A grid that stops short of the edge gets one more window flush with it: every pixel is covered.
  assert grid.patch_starts(256, 160, 80) == (0, 80, 96)
  assert grid.patch_starts(64, 64, 32) == (0,)
  with pytest.raises(ValueError, match="larger than the image"):
    grid.patch_starts(128, 160, 80)


def test_slice_gaps_repeat_the_last_gap_and_respect_the_mask():
  z = jnp.array([[0.0, 5.0, 10.0, 16.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
  np.testing.assert_allclose(grid.slice_gaps(z, mask), [[5, 5, 6, 6, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_allclose(grid.slice_gaps(z[:1, :4]), [[5, 5, 6, 6]])
