"""ich_jax.data.study: a study folder read into HU only when its values are HU of a head, and marked incomplete
when slices may be missing."""
import dataclasses
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ich_jax.data import dicom, phantom, study as study_lib

# A whole head's worth of 5 mm slices (95 mm), small matrix: fast to render and to write.
SPEC = phantom.PhantomSpec(matrix=64, pixel_spacing_mm=(3.5, 3.5), slice_thickness_mm=(5.0,), max_slices=20,
                           p_hemorrhage=1.0)


@pytest.fixture(scope="module")
def head():
  p = phantom.make_phantom(0, SPEC)
  assert len(p.hu) == 20
  return p


def _write(folder, p, **kw):
  """The phantom as one unsigned series (intercept -1024, as most scanners store CT), slice i = InstanceNumber i+1."""
  kw.setdefault("z_positions", p.z_positions_mm)
  return dicom.write_series(p.hu, (p.slice_thickness_mm, *p.pixel_spacing_mm), folder, rescale_intercept=-1024.0,
                            pixel_representation=0, **kw)


def _edit(paths, edit):
  for path in paths:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)


# --- HU: the Rescale tags and plausibility ---------------------------------------------------------------------


def test_a_series_without_rescale_tags_is_refused_naming_file_and_tag_unless_an_intercept_is_assumed(head, tmp_path):
  paths = _write(tmp_path / "s", head)

  def strip(ds):  # what an anonymiser that drops the modality LUT leaves
    del ds.RescaleSlope, ds.RescaleIntercept
  _edit(paths, strip)
  with pytest.raises(study_lib.StudyError, match=re.escape(
      f"{paths[0]}: missing required tag RescaleSlope and RescaleIntercept (Type 1 in the CT Image module")) as e:
    study_lib.read_study(tmp_path / "s")
  assert "pass --assume-rescale-intercept" in str(e.value)

  s = study_lib.read_study(tmp_path / "s", assume_intercept=-1024)
  np.testing.assert_array_equal(s.hu, head.hu)
  assert ("RescaleSlope and RescaleIntercept missing on 20 of 20 slices: slope 1 and intercept -1024 assumed there "
          "(assume_intercept)") in s.notes
  # The wrong intercept assumed: the stored values read 1024 HU too high, and the plausibility check says so.
  air, brain = study_lib.measure_hu(head.hu)
  with pytest.raises(study_lib.StudyError, match=re.escape(f"air inside the field of view reads {air + 1024:+.0f} HU")):
    study_lib.read_study(tmp_path / "s", assume_intercept=0)


def test_hu_plausibility_refuses_a_series_reading_1024_too_high_and_accepts_the_true_one(head, tmp_path):
  air, brain = study_lib.measure_hu(head.hu)
  assert -1030 <= air <= -990 and 20 <= brain <= 45     # the phantom is a plausible head: air and brain in place
  _write(tmp_path / "ok", head)
  ok = study_lib.read_study(tmp_path / "ok")
  np.testing.assert_array_equal(ok.hu, head.hu)
  assert ok.hu_check == {"air_hu": air, "brain_hu": brain, "air_expected": [-1200.0, -800.0],
                         "brain_expected": [10.0, 60.0], "plausible": True}

  # An anonymiser that zeroed the intercept of an unsigned series: every voxel reads +1024 HU.
  paths = _write(tmp_path / "zeroed", head)
  _edit(paths, lambda ds: setattr(ds, "RescaleIntercept", "0"))
  message = (f"zeroed: values are not HU of a head CT: air inside the field of view reads {air + 1024:+.0f} HU "
             f"(percentile 1; expected -1200 to -800) and brain {brain + 1024:+.0f} HU (median of the voxels "
             "950-1100 HU above that air; expected 10 to 60); check RescaleSlope/RescaleIntercept, or pass "
             "--allow-implausible-hu to predict anyway")
  with pytest.raises(study_lib.StudyError, match=re.escape(message)):
    study_lib.read_study(tmp_path / "zeroed")
  shifted = study_lib.read_study(tmp_path / "zeroed", require_hu=False)
  np.testing.assert_array_equal(shifted.hu, head.hu.astype(np.int32) + 1024)
  assert shifted.hu_check["plausible"] is False and any("values may not be HU" in n for n in shifted.notes)


def test_the_12bit_quirk_is_corrected_in_prediction_as_in_the_rsna_build(head, tmp_path):
  # datasets.md (RSNA): stored = HU mod 4096, BitsStored 12, unsigned, intercept > -100.
  truth = np.clip(head.hu, -1000, 3095)
  stored = np.mod(truth.astype(np.int32), 4096)
  dicom.write_series(stored + 1.0, (5.0, *head.pixel_spacing_mm), tmp_path / "q", z_positions=head.z_positions_mm,
                     bits_stored=12, pixel_representation=0, rescale_intercept=1.0)
  s = study_lib.read_study(tmp_path / "q")
  np.testing.assert_array_equal(s.hu, truth)
  assert s.hu_check["plausible"] and any(n.startswith("12-bit intercept quirk corrected on 20 of 20") for n in s.notes)


def test_nifti_with_nan_is_refused_with_the_count(head, tmp_path):
  data = np.ascontiguousarray(head.hu.transpose(2, 1, 0)).astype(np.float32)
  data[3, 4, 5] = data[10, 10, 10] = np.nan
  nib.save(nib.Nifti1Image(data, np.diag([-3.5, -3.5, 5.0, 1.0])), tmp_path / "nan.nii.gz")
  with pytest.raises(study_lib.StudyError, match=r"nan.nii.gz: 2 of 81920 voxels are NaN or infinite"):
    study_lib.read_study(tmp_path / "nan.nii.gz")


# --- Completeness --------------------------------------------------------------------------------------------------


def test_a_whole_series_is_complete_and_a_stray_non_dicom_file_changes_nothing(head, tmp_path):
  _write(tmp_path / "s", head, extra_tags={"ImagesInAcquisition": 20})
  (tmp_path / "s" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
  c = study_lib.read_study(tmp_path / "s").completeness
  assert c["status"] == "complete" and c["reasons"] == []
  assert c["z_coverage_mm"] == pytest.approx(95.0) and c["missing_instance_numbers"] == []
  assert c["images_in_acquisition"] == 20 and c["dropped_files"] == []


def test_an_unreadable_top_slice_makes_the_series_incomplete(head, tmp_path):
  paths = _write(tmp_path / "s", head)
  paths[-1].write_bytes(paths[-1].read_bytes()[:300])   # cut short in transfer: the header itself is incomplete
  s = study_lib.read_study(tmp_path / "s")
  assert s.num_slices == 19
  c = s.completeness
  assert c["status"] == "incomplete" and c["missing_instance_numbers"] == []   # the top one: no gap to see
  # Its header stops before SeriesInstanceUID: which series it belongs to is unknown, so it counts against the
  # series whose slices share its folder.
  assert c["dropped_files"] == [{"file": str(paths[-1]), "reason": "missing required tag SeriesInstanceUID"}]
  assert c["reasons"] == ["1 unreadable file beside the series' slices, maybe slices of it, dropped (0019.dcm: "
                          "missing required tag SeriesInstanceUID)"]


def test_instance_number_gaps_and_images_in_acquisition(head, tmp_path):
  paths = _write(tmp_path / "gap", head)
  for i in (7, 8):
    paths[i].unlink()
  c = study_lib.read_study(tmp_path / "gap", allow_uneven_spacing=True).completeness
  assert c["missing_instance_numbers"] == [8, 9]
  assert c["reasons"] == ["InstanceNumber 8, 9 missing (2 slices)"]

  # The last slice never arrived: no gap in the numbers, but the header says how many the acquisition made.
  paths = _write(tmp_path / "short", head, extra_tags={"ImagesInAcquisition": 20})
  paths[0].unlink()
  c = study_lib.read_study(tmp_path / "short").completeness
  assert c["reasons"] == ["ImagesInAcquisition is 20 but the series has 19 slices"]


def test_a_coverage_too_short_for_a_head_is_incomplete_and_strict_refuses(head, tmp_path):
  p = phantom.make_phantom(1, dataclasses.replace(SPEC, max_slices=10))
  _write(tmp_path / "s", p)
  c = study_lib.read_study(tmp_path / "s").completeness
  assert c["z_coverage_mm"] == pytest.approx(45.0)
  assert c["reasons"] == ["z coverage 45.0 mm (10 slices, 5 mm slice gap) is under the 80 mm a head needs"]
  assert study_lib.read_study(tmp_path / "s", min_coverage_mm=40).completeness["status"] == "complete"
  assert study_lib.read_study(tmp_path / "s", coverage_max_gap_mm=4).completeness["status"] == "complete"
  with pytest.raises(study_lib.StudyError, match=re.escape(
      f"s: incomplete series {pydicom.dcmread(next((tmp_path / 's').iterdir())).SeriesInstanceUID} ('HEAD NONCON'): "
      "z coverage 45.0 mm (10 slices, 5 mm slice gap) is under the 80 mm a head needs (refused by --strict")):
    study_lib.read_study(tmp_path / "s", require_complete=True)
