"""Synthetic head CT phantoms: bookkeeping, determinism, HU, anatomy of bleeds, and hardness.

Small matrices keep the file fast; the spacing is scaled so the head still fits.
"""
import dataclasses
import functools

import numpy as np
import pytest
from scipy import ndimage

import ich_jax
from ich_jax.data import phantom as P
from ich_jax.data.phantom import bleeds

# 128 pixels at 1.6–2.0 mm: the whole head, ~30 thick slices, ~0.1 s a study.
COARSE = P.PhantomSpec(matrix=128, pixel_spacing_mm=(1.6, 2.0), slice_thickness_mm=(5.0,))
# 256 pixels at 0.8–0.9 mm, every thickness, short slabs: fine enough for punctate bleeds.
FINE = P.PhantomSpec(matrix=256, pixel_spacing_mm=(0.8, 0.9), max_slices=12, p_hemorrhage=1.0)


@functools.lru_cache(maxsize=None)
def _phantom(seed, spec):
  return P.make_phantom(seed, spec)


@functools.lru_cache(maxsize=None)
def _fine_survey():
  """40 studies that all bleed: the population the coverage tests look at."""
  return [_phantom(seed, FINE) for seed in range(40)]


def _voxel_ml(ph):
  return ph.pixel_spacing_mm[0] * ph.pixel_spacing_mm[1] * ph.slice_thickness_mm / 1000.0


def _auc(labels, scores):
  """Mann–Whitney AUC with mid-ranks for ties."""
  labels = np.asarray(labels, bool)
  ranks = _midranks(np.asarray(scores, np.float64))
  n_pos, n_neg = labels.sum(), (~labels).sum()
  return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _midranks(x):
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x))
  sorted_x = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return ranks


def _dilate_in_plane(mask, iterations):
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = ndimage.generate_binary_structure(2, 1)
  return ndimage.binary_dilation(mask, structure, iterations=iterations)


def test_orders_match_the_package():
  # The phantom keeps no subtype order of its own: masks, labels and the spec's per-subtype rows follow SUBTYPES.
  assert ich_jax.LABELS == ("any",) + ich_jax.SUBTYPES
  assert len(P.PhantomSpec().subtype_probs) == len(P.SEED001_SIZE_MIX) == len(ich_jax.SUBTYPES)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_volumes_labels_and_geometry_agree_with_masks(seed):
  ph = _phantom(seed, FINE)
  S, H = ph.hu.shape[0], FINE.matrix
  assert ph.hu.dtype == np.int16 and ph.hu.shape == (S, H, H)
  assert ph.masks.dtype == bool and ph.masks.shape == (5, S, H, H)
  assert ph.slice_labels.dtype == np.float32 and ph.slice_labels.shape == (S, 6)
  assert 1 <= S <= FINE.max_slices
  assert ph.slice_thickness_mm in FINE.slice_thickness_mm
  assert np.allclose(np.diff(ph.z_positions_mm), ph.slice_thickness_mm)

  voxel = _voxel_ml(ph)
  np.testing.assert_allclose(ph.blood_ml, ph.masks.sum(axis=(1, 2, 3)) * voxel)
  union = ph.masks.any(axis=0).sum() * voxel
  assert ph.total_blood_ml == pytest.approx(union)
  assert ph.total_blood_ml <= ph.blood_ml.sum() + 1e-9

  per_slice = ph.masks.any(axis=(2, 3)).T          # [S, 5]
  np.testing.assert_array_equal(ph.slice_labels[:, 1:], per_slice.astype(np.float32))
  np.testing.assert_array_equal(ph.slice_labels[:, 0], per_slice.any(axis=1).astype(np.float32))

  # Each bleed's own volume: bleeds of one subtype add up to at least the subtype's (union) volume.
  for i, st in enumerate(ich_jax.SUBTYPES):
    own = sum(b["volume_ml"] for b in ph.bleeds if b["subtype"] == st)
    assert own >= ph.blood_ml[i] - 1e-9
    assert (own > 0) == (ph.blood_ml[i] > 0)
  for b in ph.bleeds:
    assert b["volume_ml"] == pytest.approx(b["voxels"] * voxel)
    assert b["size_bin"] == ich_jax.size_bin(b["volume_ml"])
  # Bleeds are intracranial only.
  assert not (ph.masks.any(axis=0) & ~ph.intracranial).any()


def test_no_bleed_means_empty_masks_and_labels():
  ph = _phantom(3, dataclasses.replace(COARSE, p_hemorrhage=0.0))
  assert not ph.masks.any() and not ph.slice_labels.any()
  assert ph.bleeds == [] and ph.total_blood_ml == 0.0
  np.testing.assert_array_equal(ph.blood_ml, np.zeros(5))


def test_same_seed_same_study_other_seed_differs():
  a = P.make_phantom(11, FINE)
  b = P.make_phantom(11, FINE)
  c = P.make_phantom(12, FINE)
  np.testing.assert_array_equal(a.hu, b.hu)
  np.testing.assert_array_equal(a.masks, b.masks)
  assert a.bleeds == b.bleeds and a.mimics == b.mimics
  assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("seed", [0, 2, 4, 14])
def test_blood_appears_only_where_a_mask_is(seed):
  """Same seed with and without bleeds: anatomy and noise are shared, so the difference is the blood."""
  with_blood = _phantom(seed, dataclasses.replace(COARSE, p_hemorrhage=1.0))
  without = _phantom(seed, dataclasses.replace(COARSE, p_hemorrhage=0.0))
  assert with_blood.hu.shape == without.hu.shape
  raised = (with_blood.hu.astype(np.int32) - without.hu) > 10
  # Partial volume spills a pixel or two in-plane and into the neighbouring slices' sub-slabs.
  near = _dilate_in_plane(with_blood.masks.any(axis=0), 3)
  near = ndimage.binary_dilation(near, np.ones((3, 1, 1), bool))
  assert raised.sum() > 50
  assert (raised & ~near).sum() <= 0.05 * raised.sum()
  # Masks sit where the blood is: most mask voxels are visibly denser.
  assert raised[with_blood.masks.any(axis=0)].mean() > 0.5


def test_hounsfield_units_are_plausible():
  for seed in range(4):
    ph = _phantom(seed, FINE)
    hu = ph.hu.astype(np.float32)
    # Air: the image corners.
    corners = np.concatenate([hu[:, :8, :8].ravel(), hu[:, -8:, -8:].ravel()])
    assert abs(corners.mean() + 1000) < 8
    # Skull: the ring just outside the intracranial space, on slices above the skull base.
    mid = ph.intracranial.sum(axis=(1, 2)).argmax()
    ring = _dilate_in_plane(ph.intracranial[mid:mid + 1], 6)[0] & ~ph.intracranial[mid]
    assert np.percentile(hu[mid][ring], 75) > 700
    # Brain: away from bleeds, ventricles and the bone edge.
    near_blood = _dilate_in_plane(ph.masks.any(axis=0), 6)
    core = ndimage.binary_erosion(ph.intracranial, iterations=3)
    brain = core & ~ph.ventricles & ~near_blood
    assert 20 <= hu[brain].mean() <= 45


def test_blood_density_inside_masks():
  checked = 0
  for ph in _fine_survey():
    hu = ph.hu.astype(np.float32)
    bone_edge = _dilate_in_plane(hu > 200, 2)
    for i, st in enumerate(ich_jax.SUBTYPES):
      bleeds = [b for b in ph.bleeds if b["subtype"] == st]
      if not bleeds or ph.blood_ml[i] < 1.0 or any(b.get("isodense") for b in bleeds) or st == "subarachnoid":
        continue
      core = ph.masks[i] & ~bone_edge & ~ph.masks[np.arange(5) != i].any(axis=0)
      if core.sum() < 50:
        continue
      assert 50 <= hu[core].mean() <= 90, (st, hu[core].mean())
      checked += 1
  assert checked >= 10


def test_every_subtype_size_bin_and_mimic_occurs():
  studies = _fine_survey()
  bleeds = [b for ph in studies for b in ph.bleeds]
  assert {b["subtype"] for b in bleeds} == set(ich_jax.SUBTYPES)
  assert {b["size_bin"] for b in bleeds} == {"punctate", "small", "medium", "large"}
  mimics = {m for ph in studies for m in ph.mimics}
  assert {"pineal_calcification", "choroid_calcification", "dense_falx", "beam_hardening"} <= mimics
  for ph in studies:   # a study lists a mimic exactly when some slice shows one
    assert bool(ph.mimics) == bool(ph.mimic_slices.any())
    assert set(ph.mimics) <= set(P.MIMICS)
  thin_isodense = [b for b in bleeds if b["subtype"] == "subdural" and b["isodense"]]
  assert thin_isodense and all(2 <= b["thickness_mm"] <= 4 and 45 <= b["hu"] <= 55 for b in thin_isodense)
  # A parenchymal bleed's recorded centre is a voxel of its own mask (coordinates agree).
  for ph in studies:
    for b in ph.bleeds:
      k, r, c = (int(round(v)) for v in b["center_index"])
      if b["subtype"] == "intraparenchymal" and 0 <= k < ph.hu.shape[0]:
        assert ph.masks[ich_jax.SUBTYPES.index("intraparenchymal"), k, r, c]
  # Several subtypes in one study happen.
  assert any(len({b["subtype"] for b in ph.bleeds}) >= 2 for ph in studies)


def test_extra_axial_bleeds_touch_the_inner_table_and_ivh_stays_in_the_ventricles():
  touched = ivh = 0
  for ph in _fine_survey():
    bone = ph.hu > 200    # partial volume: a thick slice cuts the vault obliquely
    for i in (ich_jax.SUBTYPES.index("epidural"), ich_jax.SUBTYPES.index("subdural")):
      if ph.masks[i].sum() >= 20:   # (a one-voxel bleed's centre may sit mid-thickness)
        # Lens and crescent lie against the inner table: a pixel or two out, the skull begins.
        assert (_dilate_in_plane(ph.masks[i], 2) & ~ph.intracranial).any()
        assert (_dilate_in_plane(ph.masks[i], 3) & bone).any()
        touched += 1
    i = ich_jax.SUBTYPES.index("intraventricular")
    if ph.blood_ml[i] > 0:
      assert (ph.masks[i] & ~ph.ventricles).sum() <= 0.01 * ph.masks[i].sum()
      ivh += 1
  assert touched >= 5 and ivh >= 2


def test_a_bleed_is_denser_than_the_brain_around_it():
  checked = 0
  for ph in _fine_survey():
    hu = ph.hu.astype(np.float32)
    blood = ph.masks.any(axis=0)
    for i, st in enumerate(ich_jax.SUBTYPES):
      big = [b for b in ph.bleeds if b["subtype"] == st and b["size_bin"] in ("medium", "large")]
      if not big or any(b.get("isodense") for b in ph.bleeds if b["subtype"] == st):
        continue
      ring = _dilate_in_plane(ph.masks[i], 3) & ~blood & ph.intracranial & (hu < 150)
      contrast = hu[ph.masks[i]].mean() - hu[ring].mean()
      assert contrast > 15, (st, contrast)
      checked += 1
  assert checked >= 8


def test_bright_pixel_baseline_is_not_enough():
  """The no-learning baseline (fraction of intracranial pixels at 50–90 HU) must stay below 0.85 AUC."""
  spec = dataclasses.replace(COARSE, p_hemorrhage=0.5)
  labels, scores = [], []
  for seed in range(30):
    ph = _phantom(seed, spec)
    hu = ph.hu
    for k in range(hu.shape[0]):
      inside = ph.intracranial[k]
      values = hu[k][inside]
      scores.append(((values >= 50) & (values <= 90)).mean() if values.size else 0.0)
      labels.append(ph.slice_labels[k, 0] > 0)
  labels = np.asarray(labels)
  assert 0.1 < labels.mean() < 0.6
  auc = _auc(labels, scores)
  print(f"bright-fraction baseline: slice-level AUC(any) = {auc:.3f} over {labels.size} slices")
  assert auc < 0.85


def test_auc_helper():
  assert _auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert _auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
  assert _auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_small_field_of_view_is_refused():
  with pytest.raises(ValueError, match="field of view"):
    P.make_phantom(0, P.PhantomSpec(matrix=128))


def test_size_mix_per_subtype_draws_each_subtype_from_its_own_bins():
  # One bin per subtype: every bleed's target volume must come from its subtype's bin.
  want = {"epidural": "large", "intraparenchymal": "small", "intraventricular": "medium",
          "subarachnoid": "punctate", "subdural": "small"}
  rows = tuple(tuple(float(b == want[s]) for b in ich_jax.SIZE_BINS) for s in ich_jax.SUBTYPES)
  spec = dataclasses.replace(COARSE, p_hemorrhage=1.0, p_extra_bleed=0.8, size_bin_probs_by_subtype=rows)
  seen = set()
  for seed in range(10):
    for b in P.make_phantom(seed, spec).bleeds:
      lo, hi = bleeds.BIN_TARGET_ML[want[b["subtype"]]]
      assert lo <= b["target_ml"] <= hi, (b["subtype"], b["target_ml"])
      seen.add(b["subtype"])
  assert len(seen) >= 3


def test_seed001_size_mix_is_the_papers_table():
  # Seed 001 Table 1, cross-validation cohort: IPH, EDH/SDH, SAH rows; IVH pools them.
  mix = dict(zip(ich_jax.SUBTYPES, P.SEED001_SIZE_MIX, strict=True))
  assert mix["intraparenchymal"] == (15, 63, 88, 192) and sum(mix["intraparenchymal"]) == 358
  assert mix["epidural"] == mix["subdural"] == (3, 49, 79, 188)
  assert mix["subarachnoid"] == (34, 52, 53, 85) and sum(mix["subarachnoid"]) == 224
  assert mix["intraventricular"] == tuple(map(sum, zip(mix["intraparenchymal"], mix["subdural"],
                                                       mix["subarachnoid"], strict=True)))


def test_bad_size_mix_is_refused():
  with pytest.raises(ValueError, match="size_bin_probs_by_subtype"):
    P.make_phantom(0, dataclasses.replace(COARSE, size_bin_probs_by_subtype=((1, 0, 0, 0),) * 4))
