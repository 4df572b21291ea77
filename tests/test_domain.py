"""The domain constants of ich_jax/__init__.py: label order and seed 001's size bins."""
import numpy as np
import pytest

import ich_jax


def test_label_order_is_any_then_the_subtypes_alphabetically():
  assert ich_jax.LABELS[0] == "any" and ich_jax.SUBTYPES == tuple(sorted(ich_jax.SUBTYPES)) == ich_jax.LABELS[1:]


def test_size_bins_are_seed_001s():
  got = ich_jax.size_bin(np.array([0.0, 0.005, 0.01, 4.99, 5.0, 25.0, 25.01, 80.0]))
  assert list(got) == ["none", "punctate", "small", "small", "medium", "medium", "large", "large"]
  assert ich_jax.size_bin(3.0) == "small"
  assert set(got) - {"none"} == set(ich_jax.SIZE_BINS)


@pytest.mark.parametrize("volume, expected", [
    (0.0, "none"), (0.004, "punctate"), (0.0099, "punctate"), (0.01, "small"), (4.99, "small"),
    (5.0, "medium"), (25.0, "medium"), (25.01, "large"), (120.0, "large")])
def test_size_bin(volume, expected):
  assert ich_jax.size_bin(volume) == expected
