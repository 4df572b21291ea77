"""ich_jax.data.dicom.write: a volume written as a valid CT series, in every storage the readers meet."""

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_encoder

from ich_jax.data import dicom

SHAPE = (6, 12, 10)  # [S, H, W]: non-square, so a row/column mix-up shows


def _volume(seed=0, shape=SHAPE, lo=-1024, hi=2000):
  return np.random.default_rng(seed).uniform(lo, hi, shape)


def test_written_header_is_a_valid_ct_slice(tmp_path):
  path = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)[2]
  ds = pydicom.dcmread(path)
  assert ds.preamble is not None and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
  assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
  assert ds.InstanceNumber == 3 and ds.BodyPartExamined == "HEAD"
  assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
  assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, -1024, "HU")
  assert (ds.WindowCenter, ds.WindowWidth) == (40, 80)
  assert float(ds.SliceLocation) == 10.0 and [float(v) for v in ds.ImagePositionPatient] == [0, 0, 10]
  assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] and ds.ConvolutionKernel == "STANDARD"
  assert not hasattr(dicom.read_header(path), "PixelData")


def test_same_arguments_write_the_same_bytes(tmp_path):
  kwargs = dict(study_uid="1.2.3.4", series_uid="1.2.3.4.5", file_names="random", rng=7)
  a = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "a", **kwargs)
  b = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path / "b", **kwargs)
  assert [p.name for p in a] == [p.name for p in b]
  assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))


def test_signed_storage_and_12_bit(tmp_path):
  hu = _volume(4, lo=-2000, hi=1500)  # padding below the intercept: signed stored values
  dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path / "signed")
  ds = pydicom.dcmread(next((tmp_path / "signed").iterdir()))
  assert ds.PixelRepresentation == 1
  np.testing.assert_array_equal(dicom.load_series(tmp_path / "signed").hu, np.rint(hu))

  dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path / "12bit", bits_stored=12,
                     pixel_representation=0, clip=True)
  ds = pydicom.dcmread(next((tmp_path / "12bit").iterdir()))
  assert (ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (12, 11, 0)
  np.testing.assert_array_equal(dicom.load_series(tmp_path / "12bit").hu,
                                np.clip(np.rint(hu), -1024, 3071))


def test_unrepresentable_hu_raises_naming_the_value(tmp_path):
  hu = np.zeros(SHAPE)
  hu[2, 3, 4] = 5000.0
  with pytest.raises(ValueError, match=r"HU value 5000.0 at index \(2, 3, 4\).*\[-1024.0, 3071.0\]"):
    dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, bits_stored=12)
  hu[1, 1, 1] = np.nan
  with pytest.raises(ValueError, match=r"HU value nan at index \(1, 1, 1\)"):
    dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path)
  assert not list(tmp_path.iterdir())  # checked before anything is written


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless],
                         ids=["rle", "j2k"])
def test_compressed_round_trip(tmp_path, syntax):
  if not get_encoder(syntax).is_available:
    pytest.skip(f"no {syntax.name} encoder here")
  hu = _volume(5, shape=(3, 64, 48), lo=-2000, hi=3000)  # OpenJPEG's 5 levels need ≥ 32 px
  paths = dicom.write_series(hu, (5.0, 0.5, 0.5), tmp_path, transfer_syntax=syntax,
                             file_names="random", rng=5)
  assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
  s = dicom.load_series(tmp_path)
  np.testing.assert_array_equal(s.hu, np.rint(hu))
  assert s.sop_uids == [pydicom.dcmread(p).SOPInstanceUID for p in paths]  # compress kept the UIDs


def test_rsna_style_sop_uids(tmp_path):
  uids = [f"ID_{i:09x}" for i in range(6)]
  # Not valid UI values, as in the RSNA release: pydicom warns on write and read.
  with pytest.warns(UserWarning, match="Invalid value for VR UI: 'ID_"):
    dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path, sop_uids=uids,
                       file_names=lambda i, uid: f"{uid}.dcm")
  with pytest.warns(UserWarning, match="Invalid value for VR UI: 'ID_"):
    s = dicom.load_series(tmp_path)
  assert s.sop_uids == uids
  assert sorted(p.name for p in s.files) == sorted(f"{u}.dcm" for u in uids)
