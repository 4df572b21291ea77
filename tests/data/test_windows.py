"""Windows, clip_rescale, channel recipes and neighbour selection (augmentation: tests/data/test_augment.py)."""

import numpy as np
import pytest

from ich_jax.data import windows


def test_apply_window_known_values():
  hu = np.array([-1000, 0, 20, 40, 60, 80, 200], np.int16)
  np.testing.assert_allclose(windows.apply_window(hu, 40, 80), [0, 0, 0.25, 0.5, 0.75, 1, 1])
  assert windows.apply_window(hu, 40, 80).dtype == np.float32
  # Bone window 600/2800 spans [-800, 2000].
  np.testing.assert_allclose(windows.apply_window(np.array([-800, 600, 2000]), 600, 2800), [0, 0.5, 1])
  with pytest.raises(ValueError, match="width"):
    windows.apply_window(hu, 40, 0)


def test_apply_window_on_jax_arrays():
  jnp = pytest.importorskip("jax.numpy")
  out = windows.apply_window(jnp.array([0, 40, 80, 200]), 40, 80)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), [0, 0.5, 1, 1])


def test_clip_rescale_known_values():
  hu = np.array([-1000, -240, -120, 0, 120, 240, 1000], np.int16)
  np.testing.assert_allclose(windows.clip_rescale(hu), [-3, -3, -1.5, 0, 1.5, 3, 3], atol=1e-6)
  np.testing.assert_allclose(windows.clip_rescale(hu, 0, 100, 0, 1), [0, 0, 0, 0, 1, 1, 1], atol=1e-6)


def test_three_windows_on_one_slice():
  hu = np.full((4, 5), 80, np.int16)
  out = windows.apply_recipe({0: hu}, windows.RSNA_3WINDOW)
  assert out.shape == (4, 5, 3) and out.dtype == np.float32
  # 80 HU: top of the brain window, middle of the subdural window, bone window (80+800)/2800.
  np.testing.assert_allclose(out[0, 0], [1.0, 0.5, 880 / 2800], rtol=1e-6)


def _constant_series(n):
  # Slice s is filled with HU 10*s, so a channel tells which slice it came from.
  return [np.full((3, 3), 10 * s, np.int16) for s in range(n)]


@pytest.mark.parametrize("s,expected_slices", [(0, (0, 0, 1)), (2, (1, 2, 3)), (4, (3, 4, 4))])
def test_neighbour_recipe_with_edges(s, expected_slices):
  series = _constant_series(5)
  recipe = ((-1, 20, 80), (0, 20, 80), (1, 20, 80))  # [-20, 60] -> [0, 1]; 10*s -> (10s+20)/80
  chosen = windows.select_neighbours(range(5), s, windows.recipe_offsets(recipe))
  assert tuple(chosen[o] for o in (-1, 0, 1)) == expected_slices
  out = windows.apply_recipe({o: series[i] for o, i in chosen.items()}, recipe)
  np.testing.assert_allclose(out[1, 1], [(10 * e + 20) / 80 for e in expected_slices], rtol=1e-6)


def test_select_neighbours_gaps():
  # Slices 3 and 4 missing around centre 2: target 3 -> 2 (1 away, 5 is 2 away),
  # target 4 -> 5 (1 away), target -1 (before the series) -> 0.
  assert windows.select_neighbours([0, 1, 2, 5, 6], 2, (1, 2, -3)) == {1: 2, 2: 5, -3: 0}
  # A tie (4 and 6 around target 5) goes to the side of the centre slice.
  assert windows.select_neighbours([4, 6, 7], 6, (-1,)) == {-1: 6}
  assert windows.select_neighbours([4, 6, 7], 4, (1,)) == {1: 4}


def test_recipe_missing_offset_names_it():
  with pytest.raises(KeyError, match="offset -1"):
    windows.apply_recipe({0: np.zeros((2, 2))}, windows.RSNA_NEIGHBOURS)


def test_named_recipes_are_triples():
  for r in (windows.RSNA_3WINDOW, windows.RSNA_NEIGHBOURS, windows.SEED000_3WINDOW, windows.SEED001_5SLICE):
    assert all(len(t) == 3 and t[2] > 0 for t in r)
  # SEED001's window is clip_rescale's interval: same map up to [0,1] -> [-3,3].
  hu = np.arange(-400, 400, 7)
  np.testing.assert_allclose(windows.apply_window(hu, 0, 480) * 6 - 3, windows.clip_rescale(hu), atol=1e-5)
