"""ich_jax.data.dicom.read: a series read back in HU, sorted along the normal; errors name file, tag, value."""

import pathlib
import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_modality_lut

from ich_jax.data import dicom

SHAPE = (6, 12, 10)  # [S, H, W]: non-square, so a row/column mix-up shows


def _volume(seed=0, shape=SHAPE, lo=-1024, hi=2000):
  return np.random.default_rng(seed).uniform(lo, hi, shape)


def _nested_random(rng):
  """Random names, every other slice in a sub-folder: names and folders say nothing."""
  def name(i, sop_uid):
    stem = f"{rng.integers(2**32):08x}"
    return f"sub/deeper/{stem}" if i % 2 else f"{stem}.dcm"
  return name


def test_round_trip_random_names_nested_folders(tmp_path):
  hu = _volume()
  study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
  paths = dicom.write_series(
      hu, (2.5, 0.45, 0.5), tmp_path, slice_thickness=5.0,  # overlapping reconstruction
      origin=(-30.0, -40.0, 12.0), patient_id="P7", study_uid=study, series_uid=series,
      file_names=_nested_random(np.random.default_rng(3)))
  (tmp_path / "README.txt").write_text("not a scan")
  (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
  shutil.copy(pydicom.data.get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")  # an index, not a slice

  s = dicom.load_series(tmp_path)

  assert s.hu.dtype == np.int16 and s.hu.shape == SHAPE
  np.testing.assert_array_equal(s.hu, np.rint(hu))
  np.testing.assert_allclose(s.z_positions, 12.0 + 2.5 * np.arange(6))
  assert np.all(np.diff(s.z_positions) > 0)
  assert s.spacing == pytest.approx((2.5, 0.45, 0.5))  # the gap from positions, not SliceThickness
  assert s.slice_thickness == 5.0
  assert (s.study_uid, s.series_uid, s.patient_id) == (study, series, "P7")
  written = {pathlib.Path(p): pydicom.dcmread(p).SOPInstanceUID for p in paths}
  assert s.files == paths and s.sop_uids == [written[p] for p in paths]
  assert len(set(s.sop_uids)) == 6
  np.testing.assert_allclose(s.positions[0], (-30.0, -40.0, 12.0))
  np.testing.assert_allclose(s.orientation, (1, 0, 0, 0, 1, 0))


def test_rotated_orientation_sorts_along_normal(tmp_path):
  # Row and column directions rotated about x and y, so the normal is oblique
  # and neither the file names nor the raw z coordinate give the order.
  a, b = np.deg2rad(17.0), np.deg2rad(-9.0)
  rot = (np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
         @ np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]]))
  orientation = np.concatenate([rot[:, 0], rot[:, 1]])
  hu = _volume(1)
  z = np.array([3.0, -2.0, 8.0, 0.5, 13.0, 5.5])  # written out of order
  dicom.write_series(hu, (2.5, 0.5, 0.5), tmp_path, z_positions=z, orientation=orientation,
                     origin=(10.0, -5.0, 40.0), file_names="random", rng=0)

  s = dicom.load_series(tmp_path)

  order = np.argsort(z)
  np.testing.assert_allclose(s.z_positions, z[order], atol=1e-9)
  np.testing.assert_array_equal(s.hu, np.rint(hu[order]))
  assert s.spacing[0] == pytest.approx(2.5)
  normal = np.cross(orientation[:3], orientation[3:])
  np.testing.assert_allclose(s.positions @ normal, s.z_positions, atol=1e-9)
  np.testing.assert_allclose(s.orientation, orientation, atol=1e-12)


def test_decreasing_positions_sorted_ascending(tmp_path):
  hu = _volume(2)
  z = 100.0 - 5.0 * np.arange(6)  # slice 0 on top, written head to foot
  dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, z_positions=z)
  s = dicom.load_series(tmp_path)
  np.testing.assert_allclose(s.z_positions, z[::-1])
  np.testing.assert_array_equal(s.hu, np.rint(hu[::-1]))
  assert s.spacing[0] == 5.0
  assert [p.name for p in s.files] == [f"{i:04d}.dcm" for i in range(5, -1, -1)]


def test_empty_folder(tmp_path):
  (tmp_path / "notes.txt").write_text("no scans here")
  with pytest.raises(dicom.DicomError, match=f"no DICOM files in {tmp_path}"):
    dicom.load_series(tmp_path)


def test_missing_position_named(tmp_path):
  paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
  ds = pydicom.dcmread(paths[4])
  del ds.ImagePositionPatient
  ds.save_as(paths[4], enforce_file_format=True)
  with pytest.raises(dicom.DicomError, match=f"{paths[4]}: missing required tag ImagePositionPatient"):
    dicom.load_series(tmp_path)


def test_two_series(tmp_path):
  a = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "a", series_description="HEAD 5mm")
  dicom.write_series(_volume(1, shape=(4, 12, 10)), (0.625, 0.5, 0.5), tmp_path / "b",
                     series_description="HEAD BONE", study_uid=pydicom.dcmread(a[0]).StudyInstanceUID)
  headers = dicom.scan_series(tmp_path)
  by_description = {h.description: h for h in headers.values()}
  assert {k: len(h.files) for k, h in by_description.items()} == {"HEAD 5mm": 6, "HEAD BONE": 4}
  with pytest.raises(dicom.DicomError) as e:
    dicom.load_series(tmp_path)
  for uid, h in headers.items():
    assert uid in str(e.value) and repr(h.description) in str(e.value)
  assert "6 files" in str(e.value) and "4 files" in str(e.value)

  bone = by_description["HEAD BONE"]
  s = dicom.load_series(tmp_path, series_uid=bone.series_uid)
  assert s.hu.shape == (4, 12, 10) and s.spacing[0] == 0.625
  assert dicom.load_series(bone.files).series_uid == bone.series_uid
  with pytest.raises(dicom.DicomError, match="SeriesInstanceUID 1.2.3 not in"):
    dicom.load_series(tmp_path, series_uid="1.2.3")


def test_duplicate_positions_name_both_files(tmp_path):
  paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path,
                             z_positions=[0.0, 5.0, 10.0, 10.0, 15.0, 20.0])
  with pytest.raises(dicom.DicomError, match=f"duplicate slice position.*{paths[2]}.*{paths[3]}"):
    dicom.load_series(tmp_path)


def test_mixed_size_or_orientation(tmp_path):
  uid = pydicom.uid.generate_uid()
  dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "x", series_uid=uid)
  dicom.write_series(_volume(shape=(1, 12, 11)), (5.0, 0.5, 0.5), tmp_path / "y",
                     series_uid=uid, z_positions=[50.0])
  with pytest.raises(dicom.DicomError, match=r"Rows/Columns 12x11 differ"):
    dicom.load_series(tmp_path)
  shutil.rmtree(tmp_path / "y")
  dicom.write_series(_volume(shape=(1, 12, 10)), (5.0, 0.5, 0.5), tmp_path / "y", series_uid=uid,
                     z_positions=[50.0], orientation=(1, 0, 0, 0, 0.96, -0.28))
  with pytest.raises(dicom.DicomError, match=r"y/0000.dcm: ImageOrientationPatient \[1.0, 0.0, 0.0, 0.0, 0.96, -0.28\]"):
    dicom.load_series(tmp_path)


def test_real_head_ct_slice_loads(tmp_path):
  src = pathlib.Path(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
  shutil.copy(src, tmp_path / "slice")  # no extension: detected by content
  s = dicom.load_series(tmp_path)
  ds = pydicom.dcmread(src)
  assert s.hu.shape == (1, 512, 512)
  np.testing.assert_array_equal(s.hu[0], apply_modality_lut(ds.pixel_array, ds))
  # air and brain are where a head CT has them
  assert s.hu.min() <= -1000 and np.median(s.hu[0, 200:300, 200:300]) == pytest.approx(35, abs=30)
  np.testing.assert_allclose(s.orientation, [float(v) for v in ds.ImageOrientationPatient])
  assert s.spacing[0] == s.slice_thickness == float(ds.SliceThickness)
