"""Transfer syntaxes a PACS exports: each fixture here is written from one signed CT volume, read back by
load_series through the decoder ``dicom.pixels`` names, and must give the uncompressed original's HU exactly."""
import pathlib

import numpy as np
import pydicom
import pydicom.data
import pydicom.encaps
import pydicom.uid as uids
import pytest
from pydicom.pixels import get_decoder

from ich_jax.data import dicom

# The first marker of each codestream: JPEG SOI + SOF3 (lossless, Process 14), JPEG-LS SOF55, J2K SOC + SIZ.
_MARKERS = {uids.JPEGLossless: b"\xff\xc3", uids.JPEGLosslessSV1: b"\xff\xc3", uids.JPEGLSLossless: b"\xff\xf7",
            uids.JPEG2000Lossless: b"\xff\x4f\xff\x51"}
_COMPRESSED = [uids.JPEGLossless, uids.JPEGLosslessSV1, uids.JPEGLSLossless, uids.RLELossless, uids.JPEG2000Lossless]
_UNCOMPRESSED = [uids.ExplicitVRBigEndian, uids.DeflatedExplicitVRLittleEndian, uids.ImplicitVRLittleEndian]
_SERIES = {"study_uid": "1.2.826.0.1.3680043.8.498.1", "series_uid": "1.2.826.0.1.3680043.8.498.2"}


def _volume():
  """Signed storage (intercept -1024, HU down to -2000: stored values to -976) over the full CT range, 64 x 48
  (OpenJPEG's 5 levels need >= 32 px), and a smooth head-like part so the predictors see real gradients."""
  rng = np.random.default_rng(7)
  hu = rng.integers(-2000, 3071, size=(3, 64, 48)).astype(np.int16)
  yy, xx = np.mgrid[:64, :48]
  hu[:, 16:48, 12:36] = (30 + (yy[16:48, 12:36] + xx[16:48, 12:36]) % 50)[None]
  return hu


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  folder = tmp_path_factory.mktemp("syntax") / "original"
  dicom.write_series(_volume(), (5.0, 0.5, 0.6), folder, **_SERIES)
  return dicom.load_series(folder)


@pytest.mark.parametrize("syntax", _COMPRESSED + _UNCOMPRESSED, ids=lambda u: u.name)
def test_every_common_syntax_reads_to_the_uncompressed_originals_hu(tmp_path, original, syntax):
  paths = dicom.write_series(_volume(), (5.0, 0.5, 0.6), tmp_path, transfer_syntax=syntax, **_SERIES)
  ds = pydicom.dcmread(paths[0])
  assert ds.file_meta.TransferSyntaxUID == syntax and ds.PixelRepresentation == 1
  if syntax in _MARKERS:  # really that codestream (JPEG Lossless comes from gdcm, which pydicom cannot write)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    assert _MARKERS[syntax] in frame[:64] and (frame[:2] == b"\xff\xd8") == (syntax != uids.JPEG2000Lossless)
  got = dicom.load_series(tmp_path)
  assert got.hu.dtype == np.int16 and got.hu.min() == -2000
  np.testing.assert_array_equal(got.hu, original.hu)
  np.testing.assert_array_equal(got.z_positions, original.z_positions)
  assert got.sop_uids == original.sop_uids and got.frame_numbers == [1, 1, 1]


def test_the_decoder_is_chosen_by_name_not_by_import_order():
  # JPEG Lossless has one permissive decoder, python-gdcm (pylibjpeg-libjpeg is GPLv3 and not a dependency).
  assert dicom.decoding_plugin(uids.JPEGLosslessSV1, "x.dcm") == "gdcm"
  assert dicom.decoding_plugin(uids.JPEG2000Lossless, "x.dcm") == "pylibjpeg"
  assert dicom.decoding_plugin(uids.RLELossless, "x.dcm") == "pydicom"
  assert dicom.decoding_plugin(uids.ExplicitVRLittleEndian, "x.dcm") == ""
  mpeg = r"x\.dcm: TransferSyntaxUID 1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2 .*\) is not .* can decode"
  with pytest.raises(dicom.DicomError, match=mpeg):
    dicom.decoding_plugin(uids.MPEG2MPML, "x.dcm")


def test_a_syntax_without_a_decoder_names_the_file_the_syntax_and_the_package(tmp_path, original, monkeypatch):
  paths = dicom.write_series(_volume(), (5.0, 0.5, 0.6), tmp_path, transfer_syntax=uids.JPEGLosslessSV1, **_SERIES)
  monkeypatch.setattr(get_decoder(uids.JPEGLosslessSV1), "_available", {})  # as without python-gdcm
  with pytest.raises(dicom.DicomError) as e:
    dicom.load_series(tmp_path)
  assert str(paths[0]) in str(e.value)
  assert "1.2.840.10008.1.2.4.70 (JPEG Lossless, Non-Hierarchical, First-Order Prediction" in str(e.value)
  assert "install python-gdcm" in str(e.value)


def test_jpeg_ls_falls_back_to_pyjpegls_without_gdcm(tmp_path, original, monkeypatch):
  dicom.write_series(_volume(), (5.0, 0.5, 0.6), tmp_path, transfer_syntax=uids.JPEGLSLossless, **_SERIES)
  decoder = get_decoder(uids.JPEGLSLossless)
  monkeypatch.setattr(decoder, "_available", {k: v for k, v in decoder._available.items() if k != "gdcm"})
  assert dicom.decoding_plugin(uids.JPEGLSLossless, "x.dcm") == "pyjpegls"
  np.testing.assert_array_equal(dicom.load_series(tmp_path).hu, original.hu)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_pydicoms_own_encoded_files_decode_to_their_uncompressed_twin(name):
  """Files encoded by other tools than ours (pydicom's test data, shipped with it: nothing is downloaded)."""
  folder = pathlib.Path(pydicom.data.__file__).parent / "test_files"
  ds = pydicom.dcmread(folder / name)
  (stored,) = dicom.iter_frames(ds, folder / name)
  np.testing.assert_array_equal(stored, pydicom.dcmread(folder / "MR_small.dcm").pixel_array)


def test_writing_an_unknown_syntax_is_refused(tmp_path):
  with pytest.raises(ValueError, match="is not a DICOM transfer syntax"):
    dicom.write_series(_volume(), (5.0, 0.5, 0.6), tmp_path, transfer_syntax="1.2.3.4")
