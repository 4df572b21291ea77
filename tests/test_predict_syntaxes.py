"""A study as a PACS exports it predicts as its uncompressed original does: JPEG Lossless (.70 and .57), JPEG-LS,
RLE, JPEG 2000, and one Enhanced (multi-frame) CT file, each beside the same decoy series (a bone kernel, a
sagittal reformat). The `runs` fixture is tests/conftest.py's; its classifier bundle compiles once a session."""
import csv

import numpy as np
import pydicom
import pydicom.uid as uids
import pytest

from ich_jax import predict
from ich_jax.data import dicom
from ich_jax.eval.prediction_files import PROB_COLUMNS
from tests.fake_runs import make_phantom, write_study

OPTIONS = predict.Options(batch_size=8, progress=False)
SERIES_UID = "1.2.826.0.1.3680043.8.498.20"
VARIANTS = {
  "jpeg-lossless-sv1": {"transfer_syntax": uids.JPEGLosslessSV1},
  "jpeg-lossless": {"transfer_syntax": uids.JPEGLossless},
  "jpeg-ls": {"transfer_syntax": uids.JPEGLSLossless},
  "rle": {"transfer_syntax": uids.RLELossless},
  "jpeg2000": {"transfer_syntax": uids.JPEG2000Lossless},
  "enhanced": {"enhanced": dicom.Enhanced(frame_order=(9, 2, 5, 0, 7, 1, 8, 3, 6, 4))},
}


def _predictions(path):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows, np.array([[float(r[c]) for c in PROB_COLUMNS] for r in rows])


@pytest.fixture(scope="module")
def original(runs, tmp_path_factory):
  root = tmp_path_factory.mktemp("syntaxes")
  p = make_phantom(5)
  write_study(root / "study", p, series_uid=SERIES_UID)
  report = predict.predict_study(runs["cls_bundle"], root / "study", root / "out", OPTIONS)
  return p, report, _predictions(root / "out" / "predictions.csv")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_compressed_or_enhanced_study_predicts_as_its_uncompressed_original(runs, original, tmp_path, variant):
  p, expected, (expected_rows, expected_prob) = original
  write_study(tmp_path / "study", p, series_uid=SERIES_UID, **VARIANTS[variant])

  report = predict.predict_study(runs["cls_bundle"], tmp_path / "study", tmp_path / "out", OPTIONS)

  rows, prob = _predictions(tmp_path / "out" / "predictions.csv")
  assert report["series"]["series_uid"] == SERIES_UID and report["series"]["num_slices"] == len(p.hu) == 10
  assert [r["z_position"] for r in rows] == [r["z_position"] for r in expected_rows]
  np.testing.assert_allclose(prob, expected_prob, rtol=0, atol=1e-6)
  for name, finding in expected["findings"].items():
    assert report["findings"][name]["probability"] == pytest.approx(finding["probability"], abs=1e-6)
    assert report["findings"][name]["positive"] == finding["positive"]
  if variant == "enhanced":  # one file: every slice names its one SOP instance, and its frame
    assert len({r["sop_uid"] for r in rows}) == 1 != len({r["sop_uid"] for r in expected_rows})
    (path,) = [f for f in (tmp_path / "study").rglob("*") if f.is_file() and f.suffix != ".txt"
               and pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == SERIES_UID]
    frames = pydicom.dcmread(path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence
    z_of_frame = {i + 1: float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for i, g in enumerate(frames)}
    assert sorted(int(r["frame_number"]) for r in rows) == list(range(1, len(frames) + 1))
    for r in rows:
      assert z_of_frame[int(r["frame_number"])] == pytest.approx(float(r["z_position"]), abs=1e-4)
  else:
    assert [r["sop_uid"] for r in rows] == [r["sop_uid"] for r in expected_rows]
    assert "frame_number" not in rows[0]
