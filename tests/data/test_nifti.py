"""ich_jax.data.nifti: any stored axis order comes back as [S, H, W] in the DICOM display convention."""
import nibabel as nib
import numpy as np
import pytest

from ich_jax.data import nifti


def _canonical():
  """[S, H, W]: a marker at the most superior, anterior (row 0), patient-left (last column) voxel."""
  v = np.zeros((4, 5, 6), np.int16)
  v[3, 0, 5] = 100
  v[0, 4, 0] = 7   # inferior, posterior, patient-right
  return v


def test_hand_written_ras_file(tmp_path):
  # RAS+: i grows toward the patient's right, j toward anterior, k toward superior.
  canon = _canonical()
  s, h, w = canon.shape
  stored = np.zeros((w, h, s), np.int16)
  for si in range(s):
    for hi in range(h):
      for wi in range(w):
        stored[w - 1 - wi, h - 1 - hi, si] = canon[si, hi, wi]
  affine = np.diag([0.5, 0.6, 5.0, 1.0])
  affine[:3, 3] = [-10, -20, 30]
  nib.save(nib.Nifti1Image(stored, affine), str(tmp_path / "ras.nii"))
  v = nifti.load_axial(tmp_path / "ras.nii")
  np.testing.assert_array_equal(v.data, canon)
  np.testing.assert_array_equal(v.source_slice, np.arange(s))
  assert v.spacing == pytest.approx((5.0, 0.6, 0.5)) and v.axcodes == ("R", "A", "S")
  np.testing.assert_allclose(v.z_positions, 30 + 5.0 * np.arange(s))


def test_descending_slices_map_back_to_their_stored_index(tmp_path):
  canon = _canonical()
  stored = np.transpose(canon, (2, 1, 0))[::-1, ::-1, ::-1]   # axes (L, P, S), all three flipped: (R, A, I)
  affine = np.diag([1.0, 1.0, -5.0, 1.0])                       # i: +x (R), j: +y (A), k: -z (I)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), affine), str(tmp_path / "rai.nii"))
  v = nifti.load_axial(tmp_path / "rai.nii")
  np.testing.assert_array_equal(v.data, canon)
  np.testing.assert_array_equal(v.source_slice, [3, 2, 1, 0])   # output slice 0 is stored slice 3 (SliceNumber 4)
  assert np.all(np.diff(v.z_positions) > 0)


def test_sagittal_last_axis_is_refused(tmp_path):
  affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])   # k along x
  nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), affine), str(tmp_path / "sag.nii"))
  with pytest.raises(nifti.NiftiError, match=r"sag.nii: stored axes .*: the last axis is not superior-inferior"):
    nifti.load_axial(tmp_path / "sag.nii")


def test_nan_and_infinite_voxels_are_refused_with_their_count(tmp_path):
  # Cast to int16 HU, NaN becomes an arbitrary value; no HU stands for "unknown".
  data = np.zeros((4, 5, 6), np.float32)
  data[1, 2, 3], data[3, 4, 5], data[0, 0, 1] = np.nan, np.inf, np.nan
  nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 5.0, 1.0])), str(tmp_path / "nan.nii"))
  with pytest.raises(nifti.NiftiError, match=r"nan.nii: 3 of 120 voxels are NaN or infinite \(the first at stored "
                                             r"index \(0, 0, 1\), value nan\)"):
    nifti.load_axial(tmp_path / "nan.nii")
