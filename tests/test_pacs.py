"""DICOM outputs for a PACS (`ich_jax.pacs`): the predicted mask as a DICOM Segmentation read back slice by slice
on its source instances (single-frame and enhanced multi-frame sources), the findings as a Secondary Capture in
the study, both validated (highdicom on construction; dciodvfy where installed); NIfTI input and failures recorded,
not raised. The `runs` bundles are tests/conftest.py's."""
import dataclasses
import json
import shutil
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from ich_jax import pacs, predict
from ich_jax.data import dicom, study as study_lib
from tests.fake_runs import make_phantom, write_study

OPTIONS = predict.Options(batch_size=8, progress=False)
IDENTITY = {"version": "0.0-test", "git_commit": None, "bundle_sha256": "ab" * 32}


def _dciodvfy_errors(path):
  """dciodvfy's "Error" lines for a file (warnings allowed); None where dciodvfy is not installed."""
  if not shutil.which("dciodvfy"):
    return None
  run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
  return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def predicted(runs, tmp_path_factory):
  """The pair bundle (classifier probabilities, U-Net mask) on a DICOM phantom study, predicted once."""
  root = tmp_path_factory.mktemp("pacs")
  files = write_study(root / "study", make_phantom(3))
  report = predict.predict_study(runs["pair"], root / "study", root / "out", OPTIONS)
  return {"files": files, "report": report, "out": root / "out"}


def test_the_seg_holds_mask_nii_slice_by_slice_on_its_source_instances(predicted):
  out, report, files = predicted["out"], predicted["report"], predicted["files"]
  assert {"seg.dcm", "overview_sc.dcm"} <= set(report["outputs"]) and (out / "seg.dcm").is_file()
  sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]      # write order is z order
  uids = [ds.SOPInstanceUID for ds in sources]
  # mask.nii.gz stores (column, row, slice) of the DICOM grid: back to [slice, row, column] in z order.
  mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj).transpose(2, 1, 0)
  assert mask.any() and not mask.all(axis=(1, 2)).all()       # blood somewhere, a slice is not all blood

  seg = hd.seg.segread(out / "seg.dcm")
  # The U-Net segments blood, not subtypes: one segment, intracranial hemorrhage, a morphologically abnormal
  # structure, with the algorithm (ich-jax, the bundle) that made it.
  assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 1
  d = seg.get_segment_description(1)
  assert (d.segmented_property_category.value, d.segmented_property_category.scheme_designator) == ("49755003", "SCT")
  assert (d.segmented_property_type.value, d.segment_label) == ("1386000", "intracranial hemorrhage (ICH)")
  assert d.algorithm_identification[0].AlgorithmName == "ich-jax"
  assert seg.DeviceSerialNumber == report["bundle"]["sha256"]
  assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
  # Per source instance in z order, empty slices included (highdicom leaves their frames out).
  got = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
  np.testing.assert_array_equal(got[..., 0], mask == 1)
  # The same through the frames' own references (pydicom): each frame is the slice its source UID names.
  raw = pydicom.dcmread(out / "seg.dcm")
  frames = raw.pixel_array.reshape(-1, *mask.shape[1:])
  for frame, item in zip(frames, raw.PerFrameFunctionalGroupsSequence):
    z = uids.index(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
    np.testing.assert_array_equal(frame, mask[z] == 1)
  assert len(frames) == int(mask.any(axis=(1, 2)).sum())
  entry = json.loads((out / "report.json").read_text())["dicom_outputs"]
  assert entry["seg"]["sop_instance_uid"] == raw.SOPInstanceUID and entry["seg"]["referenced_instances"] == len(uids)
  assert [(s["mask_value"], s["type"]["code"]) for s in entry["seg"]["segments"]] == [(1, "1386000")]
  assert f"DICOM Segmentation: seg.dcm (SOPInstanceUID {raw.SOPInstanceUID})" in (out / "report.md").read_text()


def test_the_secondary_capture_is_the_findings_over_the_overview_in_the_study(predicted):
  out, report, files = predicted["out"], predicted["report"], predicted["files"]
  sc = pydicom.dcmread(out / "overview_sc.dcm")
  source = pydicom.dcmread(files[0], stop_before_pixels=True)
  assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
  assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, source.PatientID)
  assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, report["dicom_outputs"]["seg"]["series_instance_uid"])
  assert sc.SOPInstanceUID == report["dicom_outputs"]["secondary_capture"]["sop_instance_uid"]
  # Every class's probability and decision, as report.json has them, and the disclaimer.
  comments = sc.ImageComments.splitlines()
  for name, f in report["findings"].items():
    (line,) = [c for c in comments if c.split()[1] == name]
    assert f"probability {f['probability']:.4f}" in line
    assert ("POSITIVE" in line) == f["positive"] and f"Threshold {report['threshold']:.4f}" in sc.ImageComments
  assert report["disclaimer"] in sc.ImageComments
  # The pixels: the text panel (at least 640 wide), then overview.png unchanged below it, black beside it.
  png = np.asarray(Image.open(out / "overview.png").convert("RGB"))
  pixels = sc.pixel_array
  h, w = png.shape[:2]
  assert pixels.shape == (sc.Rows, max(w, 640), 3) and sc.Rows > h
  np.testing.assert_array_equal(pixels[-h:, :w], png)
  assert not pixels[-h:, w:].any()
  assert pixels[:-h].max() > 200                 # text drawn in the panel


def test_both_objects_pass_dciodvfy_without_errors(predicted):
  for name in ("seg.dcm", "overview_sc.dcm"):
    errors = _dciodvfy_errors(predicted["out"] / name)
    if errors is None:
      pytest.skip("dciodvfy not installed (Debian: dicom3tools); highdicom validated on construction")
    assert errors == [], name


# Oblique, non-square, frames stored out of z order (as tests/data/dicom/test_frames.py writes them).
ORIENTATION = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), np.sin(0.3))
FRAME_ORDER = (3, 0, 4, 2, 1)


def _series(folder, enhanced):
  hu = np.random.default_rng(5).integers(-1024, 2000, size=(5, 12, 10)).astype(np.int16)
  dicom.write_series(hu, (2.5, 0.45, 0.5), folder, orientation=ORIENTATION, origin=(-30.0, -40.0, 12.0),
                     slice_thickness=5.0, enhanced=dicom.Enhanced(frame_order=FRAME_ORDER) if enhanced else None)
  return dicom.load_series(folder)


@pytest.mark.parametrize("enhanced", [False, True], ids=["single-frame", "enhanced"])
def test_subtype_segments_reference_each_slices_own_instance_or_frame(tmp_path, enhanced):
  series = _series(tmp_path, enhanced)
  mask = np.zeros((5, 12, 10), np.uint8)
  mask[0, 1:4, 2:5] = 1          # epidural on slice 0, intraparenchymal and subdural on slice 3, slices 1, 2, 4 empty
  mask[3, 5:9, 5:8] = 2
  mask[3, 0:2, 0:10] = 5
  files, frame_slices = pacs.source_frames(series.files, series.frame_numbers, 5)
  assert len(files) == (1 if enhanced else 5)
  segments = pacs.label_space(subtypes=True)
  seg = pacs.segmentation(mask, pacs.read_sources(files, set(series.sop_uids)), frame_slices, segments, IDENTITY)
  seg.save_as(tmp_path / "seg.dcm")
  seg = hd.seg.segread(tmp_path / "seg.dcm")
  assert [(seg.get_segment_description(n).segment_label, seg.get_segment_description(n).segmented_property_type.value)
          for n in range(1, 6)] == [("epidural hemorrhage (EDH)", "1386000"),
                                    ("intraparenchymal hemorrhage (IPH)", "274100004"),
                                    ("intraventricular hemorrhage (IVH)", "1386000"),
                                    ("subarachnoid hemorrhage (SAH)", "21454007"),
                                    ("subdural hemorrhage (SDH)", "1386000")]
  assert seg.get_segment_description(3).anatomic_regions[0].value == "35764002"        # brain ventricle
  if enhanced:
    got = seg.get_pixels_by_source_frame(series.sop_uids[0], source_frame_numbers=series.frame_numbers,
                                         assert_missing_frames_are_empty=True)
  else:
    got = seg.get_pixels_by_source_instance(series.sop_uids, assert_missing_frames_are_empty=True)
  for n in range(1, 6):
    np.testing.assert_array_equal(got[..., n - 1], mask == n, err_msg=f"segment {n}")
  assert seg.NumberOfFrames == 3           # the non-empty (slice, segment) pairs only
  if shutil.which("dciodvfy"):
    assert _dciodvfy_errors(tmp_path / "seg.dcm") == []


def test_a_mask_without_blood_is_a_seg_of_empty_frames(tmp_path):
  series = _series(tmp_path, enhanced=False)
  files, frame_slices = pacs.source_frames(series.files, series.frame_numbers, 5)
  seg = pacs.segmentation(np.zeros((5, 12, 10), np.uint8), pacs.read_sources(files), frame_slices,
                          pacs.label_space(subtypes=False), IDENTITY)
  assert seg.NumberOfFrames == 5
  got = seg.get_pixels_by_source_instance(series.sop_uids)
  assert got.shape == (5, 12, 10, 1) and not got.any()


def test_a_detectors_groups_become_segments_by_their_mask_value():
  got = pacs.label_space(True, (("intraparenchymal",), ("epidural", "subdural"), ("subarachnoid",)))
  assert [(s.value, s.label, s.type[0]) for s in got] == [
      (1, "EDH/SDH hemorrhage (epidural, subdural)", "1386000"), (2, "intraparenchymal hemorrhage (IPH)", "274100004"),
      (4, "subarachnoid hemorrhage (SAH)", "21454007")]
  mask = np.array([[0, 1, 2, 4]], np.uint8)
  np.testing.assert_array_equal(pacs.segment_numbers(mask, got), [[0, 1, 2, 3]])
  with pytest.raises(ValueError, match=r"mask values \[5\] are in no segment"):
    pacs.segment_numbers(np.array([5], np.uint8), got)


def test_a_failing_seg_no_mask_or_no_highdicom_is_recorded_and_the_panel_alone_makes_the_sc(tmp_path, monkeypatch):
  write_study(tmp_path / "study", make_phantom(5, slices=3), decoys=False)
  study = study_lib.read_study(tmp_path / "study")
  report = {"disclaimer": predict.DISCLAIMER, "threshold": 0.5, "status": "ok", "bundle": {"sha256": "cd" * 32},
            "findings": predict.study_findings(np.full((3, 6), 0.25), 0.5)}
  wrong = np.zeros((3, 64, 64), np.uint8)          # not the 128 x 128 source grid
  got = pacs.write_outputs(tmp_path, study, report, mask=wrong, subtypes=False)
  assert got["seg"] is None and not (tmp_path / "seg.dcm").exists()
  assert got["why"]["seg"] == ("failed: ValueError: mask of shape (3, 64, 64) is not on the source grid: "
                               "128 rows x 128 columns")
  assert pacs.notes(got)[0] == f"no DICOM Segmentation: {got['why']['seg']}"
  sc = pydicom.dcmread(tmp_path / "overview_sc.dcm")
  assert got["secondary_capture"]["overview"] is False and sc.Columns == pacs.PANEL_WIDTH
  assert "ICH any                probability 0.2500  negative  slice 0" in sc.ImageComments.splitlines()
  # A bundle without a mask (a classifier): no SEG and why, the Secondary Capture all the same.
  (tmp_path / "cls").mkdir()
  got = pacs.write_outputs(tmp_path / "cls", study, report)
  assert got["seg"] is None and got["why"] == {"seg": "the bundle has no segmentation or detector member: there "
                                                      "is no mask to segment"}
  assert pacs.written(got) == ["overview_sc.dcm"] and (tmp_path / "cls" / "overview_sc.dcm").is_file()
  # An install without highdicom: both recorded, nothing written, nothing raised.
  (tmp_path / "light").mkdir()
  monkeypatch.setitem(sys.modules, "highdicom", None)
  got = pacs.write_outputs(tmp_path / "light", study, report, mask=np.zeros(study.hu.shape, np.uint8))
  assert got["why"] == dict.fromkeys(("seg", "secondary_capture"), "failed: ModuleNotFoundError: import of "
                                     "highdicom halted; None in sys.modules")
  assert list((tmp_path / "light").iterdir()) == []


def test_nifti_input_writes_no_dicom_and_says_why(runs, tmp_path):
  p = make_phantom(4, slices=3)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(p.hu.transpose(2, 1, 0)), np.diag([1.9, 1.7, 5.0, 1.0])),
           tmp_path / "head.nii.gz")
  options = dataclasses.replace(OPTIONS, overview_slices=0, min_coverage_mm=0.0)
  report = predict.predict_study(runs["pair"], tmp_path / "head.nii.gz", tmp_path / "out", options)
  assert not (tmp_path / "out" / "seg.dcm").exists() and not (tmp_path / "out" / "overview_sc.dcm").exists()
  saved = json.loads((tmp_path / "out" / "report.json").read_text())["dicom_outputs"]
  assert saved["seg"] is None and saved["secondary_capture"] is None
  assert saved["why"]["seg"].startswith("the input is nifti, not DICOM: there are no source instances")
  assert saved == report["dicom_outputs"] and "mask.nii.gz" in report["outputs"]
