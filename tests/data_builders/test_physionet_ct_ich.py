"""`physionet_ct_ich` built by TFDS from a fixture in PhysioNet 1.3.1's layout: orientation, labels, masks, folds."""
import collections
import pathlib

import numpy as np
import pytest

from data_builders import resize
from data_builders.physionet_ct_ich import physionet_ct_ich as P
from tests.data_builders import fixtures

RES = 32


def build(manual_dir, data_dir, level="slice", **overrides):
  cfg = P.PhysionetCtIchConfig(name=f"fixture_{level}_{len(overrides)}", level=level, resolution=RES, min_shards=2,
                               **overrides)
  return fixtures.build(P.PhysionetCtIch, cfg, manual_dir, data_dir)


def records(builder, split):
  return fixtures.records(builder, split)


def all_records(builder):
  return fixtures.records(builder)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
  return fixtures.write_physionet(tmp_path_factory.mktemp("physionet") / "manual")


@pytest.fixture(scope="module")
def slices(fx, tmp_path_factory):
  return build(fx.root, tmp_path_factory.mktemp("tfds"))


def test_images_labels_and_masks_line_up_whatever_the_nifti_orientation(fx, slices):
  by_patient = collections.defaultdict(list)
  for r in all_records(slices):
    by_patient[int(r["patient_id"])].append(r)
  assert set(by_patient) == set(fx.patients)
  for number, recs in by_patient.items():
    truth = fx.patients[number]
    recs.sort(key=lambda r: int(r["slice_index"]))
    fit = resize.Fit(truth.hu.shape[1:], RES)
    assert len(recs) == len(truth.hu)
    for s, r in enumerate(recs):
      np.testing.assert_array_equal(r["image"], fit.image(truth.hu[s]), err_msg=f"{number} {truth.axcodes} {s}")
      np.testing.assert_array_equal(r["labels"], truth.labels[s])
      np.testing.assert_array_equal(r["mask"] > 0, fit.mask(truth.blood[s]))
      # SliceNumber is the 1-based index along the stored last axis.
      assert int(r["slice_number"]) == int(np.flatnonzero(truth.stored_to_canonical == s)[0]) + 1
      subtypes = np.flatnonzero(truth.labels[s][1:]) + 1
      if r["mask"].any():
        assert set(np.unique(r["mask"][r["mask"] > 0])) == {subtypes.max()}
        assert int(r["mask_subtype_exact"]) == int(len(subtypes) == 1)
    z = [float(r["z_position"]) for r in recs]
    np.testing.assert_allclose(np.diff(z), 5.0, rtol=1e-5)
    assert float(recs[0]["slice_thickness"]) == 5.0
    np.testing.assert_allclose(recs[0]["pixel_spacing"], [fixtures.PIXEL_MM * 2] * 2, rtol=1e-6)
  # The fixture covers flipped slice order and swapped in-plane axes.
  codes = {p.axcodes for p in fx.patients.values()}
  assert ("L", "A", "I") in codes and ("P", "R", "S") in codes


def test_folds_are_by_patient_deterministic_and_stratified(fx, slices):
  folds = collections.defaultdict(set)
  for split in slices.info.splits:
    for r in records(slices, split):
      assert split == f"fold{int(r['fold'])}"
      folds[split].add(int(r["patient_id"]))
  assert sorted(folds) == [f"fold{k}" for k in range(5)]
  seen = [p for f in folds.values() for p in f]
  assert len(seen) == len(set(seen)) == len(fx.patients)
  positive = {n: bool(p.labels[:, 0].any()) for n, p in fx.patients.items()}
  assert P.assign_folds(positive, 5, 0) == P.assign_folds(dict(reversed(positive.items())), 5, 0)
  # Stratified: the positives are dealt first, so the first folds each get one.
  got = P.assign_folds({i: i < 5 for i in range(20)}, 5, 0)
  assert sorted(got[i] for i in range(5)) == [0, 1, 2, 3, 4]
  assert P.fold_splits(4) == {"train": "fold1+fold2+fold3", "validation": "fold0", "test": "fold4"}
  joined = slices.as_data_source(P.fold_splits(0)["train"])
  assert len(joined) == sum(len(slices.as_data_source(f"fold{k}")) for k in (2, 3, 4))


def test_scans_and_chronic_exclusion(fx, tmp_path):
  scans = build(fx.root, tmp_path, level="scan", exclude_chronic=True)
  recs = {int(r["patient_id"]): r for r in all_records(scans)}
  assert set(recs) == set(fx.patients) - {fx.chronic}
  for number, r in recs.items():
    truth = fx.patients[number]
    fit = resize.Fit(truth.hu.shape[1:], RES)
    np.testing.assert_array_equal(r["volume"], fit.image(truth.hu))
    np.testing.assert_array_equal(r["labels"], truth.labels)
    np.testing.assert_array_equal(r["mask"] > 0, fit.mask(truth.blood))
    assert np.all(np.diff(r["z_positions"]) > 0)
  report = fixtures.report(scans)
  assert report["chronic_patients"] == [fx.chronic]
  assert any("chronic ICH: excluded" in n["note"] for n in report["notes"])
  assert report["skipped"] == []


def test_chronic_exclusion_without_a_way_to_find_it_fails_clearly(fx, tmp_path):
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  (manual / "Patient_demographics.csv").unlink()
  with pytest.raises(FileNotFoundError, match="exclude_chronic needs Patient_demographics.csv"):
    build(manual, tmp_path / "d", exclude_chronic=True)


def _edit_csv(path, edit):
  lines = path.read_text().splitlines()
  path.write_text("\n".join(edit(lines)) + "\n")


def test_label_and_volume_mismatches_name_both(fx, tmp_path):
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  csv_path = manual / "hemorrhage_diagnosis_raw_ct.csv"
  # Drop slice 3 of patient 49, add rows for patient 60 (never released: a note) and 77 (an error).
  _edit_csv(csv_path, lambda ls: [ln for ln in ls if not ln.startswith("49,3,")]
            + ["60,1,0,0,0,0,0,1,0", "77,1,0,0,0,0,0,1,0"])
  (manual / "ct_scans" / "050.nii").rename(manual / "ct_scans" / "051x.nii")   # 050 now has rows, no volume
  with pytest.raises(ValueError) as e:
    build(manual, tmp_path / "d")
  msg = str(e.value)
  assert f"{manual / 'ct_scans' / '049.nii'} has 6 slices; {csv_path} rows for patient 49: no row for SliceNumber 3" in msg
  assert f"{csv_path}: rows for patient 77 but no {manual / 'ct_scans' / '077.nii'}" in msg
  assert "rows for patient 50 but no" in msg
  assert "patient 60" not in msg


def test_unreadable_volume_and_missing_mask_are_skipped_and_reported(fx, tmp_path):
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  (manual / "masks" / "053.nii").unlink()
  path = manual / "ct_scans" / "066.nii"
  path.write_bytes(path.read_bytes()[:400])     # a header, then nothing
  b = build(manual, tmp_path / "d")
  report = fixtures.report(b)
  skipped = {pathlib.Path(s["file"]).relative_to(manual).as_posix(): s["reason"] for s in report["skipped"]}
  assert set(skipped) == {"ct_scans/053.nii", "ct_scans/066.nii"}
  assert "no mask" in skipped["ct_scans/053.nii"]
  assert "cannot read voxel data" in skipped["ct_scans/066.nii"]
  assert {int(r["patient_id"]) for r in all_records(b)} == set(fx.patients) - {53, 66}


def test_conflicting_rows_and_bad_values_name_file_and_line(tmp_path):
  path = tmp_path / "hemorrhage_diagnosis_raw_ct.csv"
  head = ",".join(P.CSV_COLUMNS)
  path.write_text(f"{head}\n49,1,0,0,0,0,0,1,0\n49,1,0,0,0,0,0,1,0\n49,2,0,1,0,0,0,0,0\n")
  rows, notes, dup = P.read_diagnosis(path)
  assert dup == 1 and rows[49][2].labels.tolist() == [1, 0, 1, 0, 0, 0] and not notes
  path.write_text(f"{head}\n49,1,0,0,0,0,0,1,0\n49,1,1,0,0,0,0,0,0\n")
  with pytest.raises(ValueError, match="conflicting rows for patient 49 slice 1: line 2 and line 3"):
    P.read_diagnosis(path)
  path.write_text(f"{head}\n49,1,0,0,x,0,0,1,0\n")
  with pytest.raises(ValueError, match=r"csv:2: column Subarachnoid: 'x' is not 0 or 1"):
    P.read_diagnosis(path)
  path.write_text(f"{head}\n49,0,0,0,0,0,0,1,0\n")
  with pytest.raises(ValueError, match="SliceNumber is 1-based"):
    P.read_diagnosis(path)


def test_a_volume_with_nan_voxels_is_skipped_naming_their_count(fx, tmp_path):
  # A float NIfTI with NaN voxels: cast to int16 they would become arbitrary HU.
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  truth = fx.patients[49]
  hu = truth.hu.astype(np.float32)
  hu[2, 10, 20:23] = np.nan
  fixtures.write_physionet_volume(manual / "ct_scans" / "049.nii", hu, (5.0, fixtures.PIXEL_MM, fixtures.PIXEL_MM),
                                  truth.axcodes, dtype=np.float32)
  b = build(manual, tmp_path / "d")
  skipped = {pathlib.Path(s["file"]).relative_to(manual).as_posix(): s["reason"] for s in fixtures.report(b)["skipped"]}
  assert list(skipped) == ["ct_scans/049.nii"]
  assert skipped["ct_scans/049.nii"].startswith(f"3 of {hu.size} voxels are NaN or infinite")
  assert {int(r["patient_id"]) for r in all_records(b)} == set(fx.patients) - {49}


def _truth_ml(truth) -> np.ndarray:
  """[S, 5] mL per slice and subtype from the fixture's own native 64² masks: voxels × 5 mm × 3.5 mm × 3.5 mm, each
  slice's blood under the highest subtype its labels name (the `mask` convention)."""
  voxel_ml = 5.0 * fixtures.PIXEL_MM ** 2 / 1000.0
  out = np.zeros((len(truth.blood), 5))
  for s, labels in enumerate(truth.labels):
    named = np.flatnonzero(labels[1:])
    if named.size:
      out[s, named.max()] = truth.blood[s].sum() * voxel_ml
  return out


def test_blood_volumes_are_native_mask_voxels_times_voxel_volume(fx, slices, tmp_path):
  """Per slice and per study, total and per subtype, at the NIfTI's 64² (not the stored 32², whose max-pooled
  mask holds more blood: a stored pixel is blood if any of its four native pixels is)."""
  by_patient = collections.defaultdict(list)
  for r in all_records(slices):
    by_patient[int(r["patient_id"])].append(r)
  stored_ml, native_ml = 0.0, 0.0
  for number, recs in by_patient.items():
    truth = fx.patients[number]
    recs.sort(key=lambda r: int(r["slice_index"]))
    want = _truth_ml(truth)
    for s, r in enumerate(recs):
      np.testing.assert_allclose(r["slice_subtype_ml"], want[s], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(float(r["slice_blood_ml"]), want[s].sum(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(r["study_subtype_ml"], want.sum(axis=0), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(float(r["study_blood_ml"]), want.sum(), rtol=1e-5, atol=1e-6)
      stored_ml += (r["mask"] > 0).sum() * 5.0 * float(np.prod(r["pixel_spacing"])) / 1000.0
    native_ml += want.sum()
  assert native_ml > 0 and stored_ml > 1.2 * native_ml   # counting stored pixels would inflate the bleeds
  # Scans: the same volumes, per slice stacked in slice order. One slice's CSV row now names intraventricular
  # and subdural blood: all of that slice's blood is subdural (the higher index, as in `mask`).
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  truth = fx.patients[49]
  canon = int(np.flatnonzero(truth.blood.any(axis=(1, 2)))[0])
  number = int(np.flatnonzero(truth.stored_to_canonical == canon)[0]) + 1
  _edit_csv(manual / "hemorrhage_diagnosis_raw_ct.csv",
            lambda ls: [f"49,{number},1,0,0,0,1,0,0" if ln.startswith(f"49,{number},") else ln for ln in ls])
  scans = build(manual, tmp_path / "d", level="scan")
  mixed = _truth_ml(truth)[canon].sum()
  for r in all_records(scans):
    want = _truth_ml(fx.patients[int(r["patient_id"])])
    if int(r["patient_id"]) == 49:
      want[canon] = [0, 0, 0, 0, mixed]
      assert int(r["mask_subtype_exact"][canon]) == 0 and set(np.unique(r["mask"][canon])) == {0, 5}
    np.testing.assert_allclose(r["slice_subtype_ml"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["slice_blood_ml"], want.sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(r["study_blood_ml"]), want.sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["study_subtype_ml"], want.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_blood_volumes_check_their_inputs():
  blood = np.zeros((2, 4, 4), bool)
  blood[0, :2, :2] = True
  got = P.blood_volumes(blood, np.array([3, 0]), (2.0, 0.5, 0.5))
  assert got.shape == (2, 5) and got[0].tolist() == [0, 0, 4 * 0.5 / 1000, 0, 0] and not got[1].any()
  with pytest.raises(ValueError, match=r"blood \(2, 4, 4\) and mask_subtype \(3,\) do not match"):
    P.blood_volumes(blood, np.array([1, 0, 0]), (2.0, 0.5, 0.5))
