"""ich_jax.data.dicom.files: DICOM recognised by content; a corrupt or cut-short file is named."""

import numpy as np
import pytest

from ich_jax.data import dicom
from ich_jax.data.dicom import files

SHAPE = (6, 12, 10)  # [S, H, W]: non-square, so a row/column mix-up shows


def _volume(seed=0, shape=SHAPE, lo=-1024, hi=2000):
  return np.random.default_rng(seed).uniform(lo, hi, shape)


def test_corrupt_file_named(tmp_path):
  dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
  bad = tmp_path / "garbage.dcm"
  bad.write_bytes(np.random.default_rng(0).bytes(3000))
  with pytest.raises(dicom.DicomError, match=f"{bad}: corrupt DICOM"):
    dicom.load_series(tmp_path)


def test_truncated_file_named(tmp_path):
  paths = dicom.write_series(_volume(), (5.0, 0.5, 0.5), tmp_path)
  data = paths[3].read_bytes()
  paths[3].write_bytes(data[: len(data) - 50])
  with pytest.raises(dicom.DicomError, match=str(paths[3])):
    dicom.load_series(tmp_path)


def test_known_non_dicom_suffixes_are_passed_over_and_a_non_dicom_header_is_named(tmp_path):
  dicom.write_series(_volume(shape=(2, 4, 4)), (5.0, 0.5, 0.5), tmp_path / "s")
  for name in ("notes.txt", "labels.csv", "mask.nii.gz", "slice"):
    (tmp_path / name).write_text("not a scan")
  names = [p.name for p in files.dicom_candidates(tmp_path)]
  assert names == ["0000.dcm", "0001.dcm", "slice"]             # sorted paths; "slice" is judged by content
  assert {".txt", ".csv", ".gz"} <= dicom.NOT_DICOM_SUFFIXES
  with pytest.raises(dicom.DicomError, match=f"{tmp_path / 'slice'}: not a DICOM file"):
    dicom.read_header(tmp_path / "slice")
  assert [p.name for p, _ in files.read_all(files.dicom_candidates(tmp_path), stop_before_pixels=True)] == [
      "0000.dcm", "0001.dcm"]
  with pytest.raises(dicom.DicomError, match=f"{tmp_path / 'notes.txt'}: not a directory"):
    files.dicom_candidates(tmp_path / "notes.txt")
