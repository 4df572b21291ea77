"""Where a read DICOM series lies in NIfTI's world: its RAS affine (prediction writes masks as NIfTI)."""

from __future__ import annotations

import numpy as np

from ich_jax.data.dicom.geometry import slice_normal
from ich_jax.data.dicom.read import Series


def nifti_affine(series: Series) -> np.ndarray:
  """The RAS affine of ``series`` stored NIfTI-style: ``array[i, j, k] = series.hu[k, j, i]``.

  i runs along a row (the row direction, ImageOrientationPatient[:3], column
  spacing), j down the columns (ImageOrientationPatient[3:], row spacing), k
  along the sorted slices (their mean ImagePositionPatient step, so a tilted
  gantry's shear is kept). DICOM's patient frame is LPS; NIfTI's is RAS, hence
  the sign flip of x and y. A one-slice series steps one gap (the
  SliceThickness) along the normal.
  """
  o = np.asarray(series.orientation, np.float64)
  row_dir, col_dir = o[:3], o[3:]
  n = len(series.z_positions)
  if n > 1:
    step = (series.positions[-1] - series.positions[0]) / (n - 1)
  else:
    gap = series.spacing[0] if np.isfinite(series.spacing[0]) and series.spacing[0] > 0 else 1.0
    step = slice_normal(o, strict=True, where="series orientation") * gap
  lps = np.eye(4)
  lps[:3, 0] = row_dir * series.spacing[2]
  lps[:3, 1] = col_dir * series.spacing[1]
  lps[:3, 2] = step
  lps[:3, 3] = series.positions[0]
  return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
