"""ich_jax.data.dicom.affine: a read series' voxels land where the DICOM positions say, in RAS."""
import numpy as np
import pytest

from ich_jax.data import dicom


def test_nifti_affine_maps_voxels_to_their_dicom_positions_in_ras(tmp_path):
  # Tilted rows and columns, slices written out of order: the affine follows the sorted positions.
  tilt = np.deg2rad(15.0)
  orientation = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt))
  dicom.write_series(np.zeros((4, 6, 5)), (2.5, 0.45, 0.5), tmp_path, orientation=orientation,
                     z_positions=[5.0, 0.0, 7.5, 2.5], origin=(-30.0, -40.0, 12.0))
  s = dicom.load_series(tmp_path)
  affine = dicom.nifti_affine(s)
  lps_to_ras = np.array([-1.0, -1.0, 1.0])
  for k in range(4):
    for j, i in ((0, 0), (5, 4), (2, 3)):     # array[i, j, k] = hu[k, j, i]
      expected = s.positions[k] + i * 0.5 * np.asarray(orientation[:3]) + j * 0.45 * np.asarray(orientation[3:])
      np.testing.assert_allclose(affine @ [i, j, k, 1.0], [*(expected * lps_to_ras), 1.0], atol=1e-9)


def test_a_one_slice_series_steps_one_gap_along_the_normal(tmp_path):
  dicom.write_series(np.zeros((1, 4, 4)), (5.0, 0.5, 0.5), tmp_path, slice_thickness=3.0)
  s = dicom.load_series(tmp_path)
  assert s.spacing[0] == pytest.approx(3.0)    # one slice: SliceThickness stands in for the gap
  np.testing.assert_allclose(dicom.nifti_affine(s)[:3, 2], [0.0, 0.0, 3.0])
