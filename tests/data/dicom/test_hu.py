"""ich_jax.data.dicom.hu: stored values to HU, the modality LUT, RSNA's 12-bit quirk, refused Rescale tags."""

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_modality_lut

from ich_jax.data import dicom

SHAPE = (6, 12, 10)  # [S, H, W]: non-square, so a row/column mix-up shows


def _volume(seed=0, shape=SHAPE, lo=-1024, hi=2000):
  return np.random.default_rng(seed).uniform(lo, hi, shape)


def test_slope_and_intercept_are_exact(tmp_path):
  hu = np.rint(_volume(3)) + 0.5 * (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 2)  # half-HU steps
  paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path,
                             rescale_slope=0.5, rescale_intercept=-1000.0)
  for i, path in enumerate(paths):
    ds = pydicom.dcmread(path)
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (0.5, -1000.0)
    np.testing.assert_array_equal(dicom.to_hu(ds), hu[i])
    assert dicom.to_hu(ds).dtype == np.float32
  s = dicom.load_series(tmp_path)
  np.testing.assert_array_equal(s.hu, np.clip(np.rint(hu), -32768, 32767))


def test_12bit_quirk_rule_matches_datasets_md():
  ds = pydicom.Dataset()
  ds.BitsStored, ds.PixelRepresentation, ds.RescaleIntercept = 12, 0, "-99"
  assert dicom.has_12bit_quirk(ds)
  ds.RescaleIntercept = "-1024"
  assert not dicom.has_12bit_quirk(ds)
  ds.RescaleIntercept, ds.PixelRepresentation = "0", 1
  assert not dicom.has_12bit_quirk(ds)
  ds.PixelRepresentation, ds.BitsStored = 0, 16
  assert not dicom.has_12bit_quirk(ds)
  del ds.RescaleIntercept
  ds.BitsStored = 12
  assert not dicom.has_12bit_quirk(ds)


def test_12bit_quirk_is_corrected_for_every_reader(tmp_path):
  # datasets.md (RSNA): stored = (HU + 1000 - 1000) mod 4096, BitsStored 12, unsigned, intercept > -100.
  # The shared reader (prediction, every builder) must give the true HU, not air at ~+3000.
  hu = np.rint(_volume(7, lo=-1000, hi=3000))
  hu[:, 0, 0] = -1000.0  # air in every slice
  stored = np.mod(hu.astype(np.int32), 4096)
  paths = dicom.write_series(stored + 1.0, (5.0, 0.5, 0.5), tmp_path, bits_stored=12,
                             pixel_representation=0, rescale_intercept=1.0)
  s = dicom.load_series(tmp_path)
  np.testing.assert_array_equal(s.hu, hu)
  assert s.hu[:, 0, 0].tolist() == [-1000] * SHAPE[0]
  assert s.notes == ["12-bit intercept quirk corrected on 6 of 6 slices (BitsStored 12, unsigned, "
                     "RescaleIntercept > -100: stored values shifted by +1000 modulo 4096, intercept -1000)"]
  values, rescale = dicom.slice_hu(pydicom.dcmread(paths[0]))
  assert rescale == dicom.Rescale(1.0, -1000.0, quirk_12bit=True)
  np.testing.assert_array_equal(values, hu[0])


def test_missing_rescale_tags_are_refused_unless_an_intercept_is_assumed(tmp_path):
  # An anonymiser that strips the modality LUT of an unsigned series: stored values are HU + 1024.
  hu = np.rint(_volume(8, lo=-1024, hi=2000))
  paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, rescale_intercept=-1024.0)
  for path in paths:
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(path, enforce_file_format=True)
  first = sorted(paths)[0]
  with pytest.raises(dicom.DicomError, match=f"{first}: missing required tag RescaleSlope and RescaleIntercept "
                                             r"\(Type 1 in the CT Image module"):
    dicom.load_series(tmp_path)
  with pytest.raises(dicom.DicomError, match="missing required tag RescaleSlope and RescaleIntercept"):
    dicom.to_hu(pydicom.dcmread(first))

  s = dicom.load_series(tmp_path, assume_intercept=-1024.0)
  np.testing.assert_array_equal(s.hu, hu)
  assert s.notes == ["RescaleSlope and RescaleIntercept missing on 6 of 6 slices: slope 1 and intercept -1024 "
                     "assumed there (assume_intercept)"]
  # Only the intercept missing: the slice's own slope stays.
  ds = pydicom.dcmread(first)
  ds.RescaleSlope = "2"
  assert dicom.rescale_of(ds, assume_intercept=-1000.0) == dicom.Rescale(2.0, -1000.0, assumed=("RescaleIntercept",))


@pytest.mark.parametrize("name", ["J2K_pixelrep_mismatch.dcm", "CT_small.dcm"])
def test_real_slice_hu_matches_pydicom(name):
  ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
  hu = dicom.to_hu(ds)
  assert hu.dtype == np.float32 and hu.shape == (ds.Rows, ds.Columns)
  np.testing.assert_array_equal(hu, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
