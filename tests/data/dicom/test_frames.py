"""Enhanced (multi-frame) CT: one file whose frames are the slices, placed, rescaled and windowed by its
functional groups, reads as the single-frame series of the same volume does; selection sees its frames."""
import numpy as np
import pydicom
import pydicom.encaps
import pytest

from ich_jax.data import dicom, series_selection

# Oblique (rotated about x), non-square, frames written out of z order: a reader that took file order, the
# raw z coordinate or a swapped row/column would differ from the single-frame series.
ORIENTATION = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), np.sin(0.3))
FRAME_ORDER = (3, 0, 4, 2, 1)
SPACING = (2.5, 0.45, 0.5)


def _volume():
  return np.random.default_rng(5).integers(-1024, 2000, size=(5, 12, 10)).astype(np.int16)


def _write(folder, enhanced=None, **kw):
  return dicom.write_series(_volume(), SPACING, folder, orientation=ORIENTATION, origin=(-30.0, -40.0, 12.0),
                            slice_thickness=5.0, study_uid="1.2.826.0.1.3680043.8.498.10",
                            series_uid="1.2.826.0.1.3680043.8.498.11", enhanced=enhanced, **kw)


@pytest.mark.parametrize("per_frame", [(), ("PlaneOrientationSequence", "PixelValueTransformationSequence",
                                             "PixelMeasuresSequence", "FrameVOILUTSequence")],
                         ids=["shared", "per-frame"])
def test_an_enhanced_file_reads_as_its_single_frame_series(tmp_path, per_frame):
  single = dicom.load_series(_write(tmp_path / "single"))
  (path,) = _write(tmp_path / "enhanced", dicom.Enhanced(per_frame=per_frame, frame_order=FRAME_ORDER))
  ds = pydicom.dcmread(path)
  assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage and ds.NumberOfFrames == 5
  assert "ImagePositionPatient" not in ds and "PixelSpacing" not in ds and "RescaleIntercept" not in ds

  got = dicom.load_series(tmp_path / "enhanced")

  np.testing.assert_array_equal(got.hu, single.hu)
  np.testing.assert_array_equal(got.hu, _volume())
  np.testing.assert_allclose(got.z_positions, single.z_positions)
  np.testing.assert_allclose(got.positions, single.positions)
  np.testing.assert_allclose(got.orientation, single.orientation)
  assert got.spacing == pytest.approx(single.spacing) and got.slice_thickness == 5.0
  np.testing.assert_array_equal(got.windows, single.windows)
  assert (got.study_uid, got.series_uid, got.series_description) == (
      single.study_uid, single.series_uid, single.series_description)
  # Per slice in z order: the one file and UID, and which frame holds the slice (frame f holds slice order[f]).
  assert got.files == [path] * 5 and got.sop_uids == [ds.SOPInstanceUID] * 5
  assert got.frame_numbers == [FRAME_ORDER.index(k) + 1 for k in range(5)] == [2, 5, 4, 1, 3]
  assert single.frame_numbers == [1] * 5


def test_a_frames_own_groups_win_over_the_shared_ones(tmp_path):
  (path,) = _write(tmp_path, dicom.Enhanced(frame_order=FRAME_ORDER))
  ds = pydicom.dcmread(path)
  # Frame 3 holds slice 4 (the last in z): its own rescale and window, the others' from the shared groups.
  own = pydicom.Dataset()
  own.RescaleIntercept, own.RescaleSlope, own.RescaleType = "-1000", "1", "HU"
  voi = pydicom.Dataset()
  voi.WindowCenter, voi.WindowWidth = "50", "100"
  frame = ds.PerFrameFunctionalGroupsSequence[2]
  frame.PixelValueTransformationSequence = pydicom.Sequence([own])
  frame.FrameVOILUTSequence = pydicom.Sequence([voi])
  ds.save_as(path)

  got = dicom.load_series(tmp_path)

  expected = _volume()
  expected[4] += 24  # stored values with intercept -1000 instead of -1024
  np.testing.assert_array_equal(got.hu, expected)
  assert got.windows.tolist() == [[40.0, 80.0]] * 4 + [[50.0, 100.0]]


def test_a_missing_frame_position_names_the_file_the_frame_and_the_tag(tmp_path):
  (path,) = _write(tmp_path, dicom.Enhanced())
  ds = pydicom.dcmread(path)
  del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
  ds.save_as(path)
  with pytest.raises(dicom.DicomError, match=rf"^{path} frame 3: missing required tag ImagePositionPatient$"):
    dicom.load_series(tmp_path)


def test_two_frames_at_one_position_and_frames_without_groups_are_refused(tmp_path):
  (path,) = _write(tmp_path, dicom.Enhanced())
  ds = pydicom.dcmread(path)
  frames = ds.PerFrameFunctionalGroupsSequence
  frames[4].PlanePositionSequence[0].ImagePositionPatient = frames[1].PlanePositionSequence[0].ImagePositionPatient
  ds.save_as(path)
  with pytest.raises(dicom.DicomError, match=rf"duplicate slice position .* in {path} frame 2 and {path} frame 5"):
    dicom.load_series(tmp_path)
  del ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence
  ds.save_as(path)
  with pytest.raises(dicom.DicomError, match=rf"^{path}: NumberOfFrames is 5 but there is no PerFrame"):
    dicom.load_series(tmp_path)


def test_pixel_data_with_fewer_frames_than_it_declares_is_refused(tmp_path):
  (path,) = _write(tmp_path, dicom.Enhanced(), transfer_syntax=pydicom.uid.RLELossless)
  ds = pydicom.dcmread(path)
  frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=5))
  ds.PixelData = pydicom.encaps.encapsulate(frames[:4])  # a fragment lost: nothing else says so
  ds.save_as(path)
  with pytest.raises(dicom.DicomError, match=rf"^{path}: PixelData holds 4 frames, NumberOfFrames says 5$"):
    dicom.load_series(tmp_path)


def test_selection_reads_an_enhanced_series_kernel_thickness_and_frames(tmp_path):
  """Selection counts frames as slices and reads the kernel (CTReconstructionSequence) and thickness
  (PixelMeasuresSequence) from the functional groups: the soft series wins, the bone twin is rejected."""
  _write(tmp_path, dicom.Enhanced(file_name="soft.dcm"))
  dicom.write_series(_volume(), SPACING, tmp_path, orientation=ORIENTATION, kernel="BONE", series_number=2,
                     series_description="HEAD", enhanced=dicom.Enhanced(file_name="bone.dcm"))
  selection, files, unreadable = series_selection.select_in_folder(tmp_path)
  assert selection.series_uid == "1.2.826.0.1.3680043.8.498.11" and files == [tmp_path / "soft.dcm"]
  assert not unreadable
  chosen, rejected = selection.to_dict()["candidates"]
  assert (chosen["num_slices"], chosen["thickness_mm"], chosen["kernel"]) == (5, 5.0, "STANDARD")
  assert "axial (tilt 17.2 deg)" in selection.reason
  assert rejected["reasons"] == ["sharp kernel 'BONE'"]
  header = dicom.scan_series(tmp_path)["1.2.826.0.1.3680043.8.498.11"].header
  assert header.get("ConvolutionKernel") == "STANDARD" and header.get("SliceThickness") == 5.0


def test_enhanced_writer_refuses_what_it_cannot_write(tmp_path):
  with pytest.raises(ValueError, match=r"frame_order must be a permutation of 0\.\.4"):
    _write(tmp_path, dicom.Enhanced(frame_order=(0, 1, 2, 3, 3)))
  with pytest.raises(ValueError, match=r"per_frame names \['PlanePosition'\]"):
    _write(tmp_path, dicom.Enhanced(per_frame=("PlanePosition",)))
