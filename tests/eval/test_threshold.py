"""Seed 002's threshold baseline: the grid search over (lower, upper) on 8-bit brain-window slices."""
import numpy as np
import pytest

from ich_jax.eval import metrics as M
from ich_jax.eval import threshold


def _slices(rng, n=6, size=24):
  grey = rng.integers(120, 140, size=(n, size, size)).astype(np.uint8)   # brain
  grey[:, :2] = 255                                                      # bone, saturated by the window
  mask = np.zeros((n, size, size), np.uint8)
  for k in range(n - 1):                                                 # the last slice has no blood
    r, c = rng.integers(4, size - 8, 2)
    mask[k, r:r + 5, c:c + 4] = 1
  grey[mask > 0] = rng.integers(180, 201, int(mask.sum()))               # blood at 180–200
  return grey, mask


def test_grid_search_finds_the_blood_range_and_matches_the_jaccard_it_optimises():
  rng = np.random.default_rng(0)
  grey, mask = _slices(rng)
  every, blood = threshold.histograms(grey, mask)
  assert every.sum() == grey.size and blood.sum() == mask.sum()
  # Any lower in 140–180 and upper in 210–254 separates blood exactly; ties go to the lowest pair.
  chosen = threshold.search(every, blood)
  assert (chosen["lower"], chosen["upper"]) == (140, 210) and chosen["train_jaccard"] == pytest.approx(1.0)
  assert chosen["n_train_slices_with_blood"] == 5
  np.testing.assert_array_equal(threshold.segment(grey, 140, 210), mask)
  # Each grid cell is the mean slice Jaccard over the slices with blood, as metrics.jaccard computes it.
  noisy_grey, noisy_mask = _slices(np.random.default_rng(1))
  noisy_grey[:, 10:12] = rng.integers(100, 256, size=noisy_grey[:, 10:12].shape)
  jac = threshold.grid_jaccard(*threshold.histograms(noisy_grey, noisy_mask))
  assert jac.shape == (len(threshold.LOWER), len(threshold.UPPER))
  blood_slices = noisy_mask.reshape(len(noisy_mask), -1).any(1)
  for lo, hi in ((100, 210), (150, 230), (185, 255)):
    want = M.jaccard(threshold.segment(noisy_grey, lo, hi)[blood_slices], noisy_mask[blood_slices], axis=(1, 2))
    got = jac[threshold.LOWER.index(lo), threshold.UPPER.index(hi)]
    assert got == pytest.approx(want.mean(), rel=1e-12)
  # The paper's window: 8 bits of [0, 1], rounded.
  np.testing.assert_array_equal(threshold.to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1])), [0, 128, 255, 255, 0])
  with pytest.raises(ValueError, match="no training slice has blood"):
    threshold.search(*threshold.histograms(grey[-1:], mask[-1:]))
