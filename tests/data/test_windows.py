"""Windows, clip_rescale, channel recipes and neighbour selection; affine augmentation."""

import ml_collections
import numpy as np
import pytest

from ich_jax.data import augment as aug
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


# --- augmentation ---------------------------------------------------------------


def _aug_cfg(**kw):
  c = ml_collections.ConfigDict(dict(enabled=True, rotation_deg=0.0, shift_frac=0.0, scale_range=(1.0, 1.0),
                                     shear_deg=0.0, hflip=False, vflip=False))
  c.update(kw)
  return c


def _spot_example(h=9, w=11, r=2, c=3):
  image = np.zeros((h, w, 2), np.float32)
  image[r, c] = (1.0, 0.5)
  mask = np.zeros((h, w), np.uint8)
  mask[r, c] = 4
  return {"image": image, "mask": mask, "labels": np.array([1, 0, 0, 1, 0, 0], np.float32),
          "pixel_spacing": np.array([0.5, 0.5], np.float32)}


def test_identity_config_leaves_example_unchanged():
  ex = _spot_example()
  rng = np.random.default_rng(0)
  for cfg in (_aug_cfg(), _aug_cfg(enabled=False, rotation_deg=30.0, hflip=True)):
    out = aug.augment(ex, rng, cfg)
    for k in ex:
      np.testing.assert_array_equal(out[k], ex[k])


def test_rotation_90_matches_rot90_in_image_and_mask():
  ex = _spot_example(h=9, w=9, r=2, c=3)
  m = aug.affine_matrix(aug.AffineParams(rotation_deg=90.0), (9, 9))
  out = aug.apply_affine(ex, m)
  np.testing.assert_allclose(out["image"], np.rot90(ex["image"]), atol=1e-6)
  np.testing.assert_array_equal(out["mask"], np.rot90(ex["mask"]))
  assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"])) == {0, 4}
  np.testing.assert_array_equal(out["labels"], ex["labels"])
  # Counter-clockwise on screen: (2, 3) -> (W-1-3, 2).
  assert np.argwhere(out["mask"]).tolist() == [[5, 2]]


def test_flips_and_scale_geometry():
  ex = _spot_example()
  out = aug.apply_affine(ex, aug.affine_matrix(aug.AffineParams(hflip=True), (9, 11)))
  np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
  np.testing.assert_array_equal(out["mask"], ex["mask"][:, ::-1])
  out = aug.apply_affine(ex, aug.affine_matrix(aug.AffineParams(vflip=True), (9, 11)))
  assert np.argwhere(out["mask"]).tolist() == [[6, 3]]
  out = aug.apply_affine(ex, aug.affine_matrix(aug.AffineParams(scale=2.0), (9, 11)))
  np.testing.assert_allclose(out["pixel_spacing"], [0.25, 0.25])
  # Scale 2 about the centre (4, 5): (2, 3) -> (0, 1).
  assert out["mask"][0, 1] == 4 and out["image"][0, 1, 0] == pytest.approx(1.0)


def test_random_hflip_moves_image_and_mask_together():
  cfg = _aug_cfg(hflip=True)
  ex = _spot_example()
  rng = np.random.default_rng(1)
  seen = set()
  for _ in range(40):
    out = aug.augment(ex, rng, cfg)
    pos_mask = tuple(np.argwhere(out["mask"])[0])
    pos_image = tuple(np.argwhere(out["image"][..., 0] == out["image"][..., 0].max())[0])
    assert pos_mask == pos_image
    seen.add(pos_mask)
  assert seen == {(2, 3), (2, 7)}


def test_flips_disabled_never_flip():
  # A mirror is the only part of the map with a negative determinant; rotation,
  # scale and shear keep it positive. So det > 0 on every draw means no flip.
  cfg = _aug_cfg(rotation_deg=180.0, scale_range=(0.9, 1.1), shift_frac=0.05)
  rng = np.random.default_rng(2)
  for _ in range(200):
    p = aug.sample_params(rng, cfg, (33, 33))
    assert not p.hflip and not p.vflip
    assert np.linalg.det(aug.affine_matrix(p, (33, 33))[:2, :2]) > 0


def test_augment_is_deterministic_given_rng():
  cfg = _aug_cfg(rotation_deg=30.0, shift_frac=0.1, scale_range=(0.8, 1.2), shear_deg=5.0, hflip=True)
  ex = _spot_example(h=16, w=16, r=5, c=6)
  a = aug.augment(ex, np.random.default_rng(7), cfg)
  b = aug.augment(ex, np.random.default_rng(7), cfg)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["mask"], b["mask"])


def test_warp_matches_scipy_affine_transform():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(3)
  ex = {"image": rng.random((20, 24, 3)).astype(np.float32), "mask": rng.integers(0, 6, (20, 24)).astype(np.uint8)}
  for _ in range(5):
    p = aug.AffineParams(rotation_deg=rng.uniform(-40, 40), shift=tuple(rng.uniform(-3, 3, 2)),
                         scale=rng.uniform(0.7, 1.3), shear_deg=rng.uniform(-10, 10), hflip=bool(rng.random() < 0.5))
    m = aug.affine_matrix(p, (20, 24))
    inv = np.linalg.inv(m)
    out = aug.apply_affine(ex, m)
    for k in range(3):
      ref = ndimage.affine_transform(ex["image"][..., k], inv[:2, :2], offset=inv[:2, 2], order=1,
                                     mode="grid-constant", cval=float(ex["image"][..., k].min()))
      np.testing.assert_allclose(out["image"][..., k], ref, atol=1e-5)
    ref = ndimage.affine_transform(ex["mask"], inv[:2, :2], offset=inv[:2, 2], order=0, mode="grid-constant")
    # Nearest rounding can differ exactly at .5 ties; elsewhere identical.
    assert np.mean(out["mask"] != ref) < 0.01


def test_batched_maps_are_the_per_example_maps_bit_for_bit():
  # On-device preprocessing draws a batch's maps in one call; they must be the host's maps exactly.
  cfg = _aug_cfg(rotation_deg=30.0, shift_frac=0.1, scale_range=(0.8, 1.2), shear_deg=5.0, hflip=True, vflip=True)
  shape = (20, 30)
  rngs = lambda: (np.random.default_rng([3, i]) for i in range(64))
  batched = aug.random_matrices(rngs(), cfg, shape)
  singles = [aug.random_matrix(rng, cfg, shape) for rng in rngs()]
  assert batched.shape == (64, 3, 3) and all(m is not None for m in singles)
  np.testing.assert_array_equal(batched, np.stack(singles))
  np.testing.assert_array_equal(aug.source_terms(batched, shape), np.stack([aug.source_terms(m, shape) for m in singles]))
  spacing = np.random.default_rng(1).uniform(0.4, 1.0, (64, 2)).astype(np.float32)
  np.testing.assert_array_equal(aug.warped_spacing(spacing, batched),
                                np.stack([aug.warped_spacing(s, m) for s, m in zip(spacing, singles)]))
  # Identity maps (random_matrix: None) become exactly the identity, whose terms are the plain grid.
  still = aug.random_matrices(rngs(), _aug_cfg(), shape)
  assert all(aug.random_matrix(rng, _aug_cfg(), shape) is None for rng in rngs())
  np.testing.assert_array_equal(still, np.broadcast_to(np.eye(3), (64, 3, 3)))
  np.testing.assert_array_equal(aug.source_terms(still, shape)[0], aug.source_terms(None, shape))
