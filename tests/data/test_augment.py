"""Random affine augmentation: geometry of image and mask together, flips, determinism, and the warp against scipy."""
import ml_collections
import numpy as np
import pytest

from ich_jax.data import augment as aug


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
