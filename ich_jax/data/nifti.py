"""NIfTI volumes in the orientation `dicom.load_series` gives: [S, H, W], S superior-ascending.

A NIfTI file stores voxels in whatever axis order and direction its converter
chose; only the affine says where they are. PhysioNet CT-ICH (datasets.md)
stores slices on the last axis with per-slice labels in a CSV indexed by that
axis (SliceNumber, 1-based), so the reorientation must also say which stored
slice each output slice came from, or labels and masks drift off their images.

Output convention, the same as a standard axial DICOM series
(ImageOrientationPatient 1,0,0,0,1,0): columns run toward the patient's left,
rows toward posterior, slices toward superior. In nibabel's axis codes (RAS
world) that array is (L, P, S) before the [S, H, W] transpose.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

_TARGET = ("L", "P", "S")


@dataclasses.dataclass
class AxialVolume:
  data: np.ndarray               # [S, H, W] in the file's dtype after scaling (float32 unless unscaled ints)
  source_slice: np.ndarray       # int64 [S]: the stored last-axis index (0-based) of each output slice
  z_positions: np.ndarray        # float64 [S], ascending: slice centre along the slice axis (mm, world)
  spacing: tuple[float, float, float]   # (slice gap, row spacing, column spacing) mm
  axcodes: tuple[str, str, str]  # the stored orientation, e.g. ("R", "A", "S")
  affine: np.ndarray             # the affine used (the file's own, or the one passed in)
  stored_shape: tuple[int, int, int]


class NiftiError(ValueError):
  """A NIfTI file that cannot be read as an axial volume."""


def reorientation(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
  """(nibabel orientation transform to L,P,S; affine of the reoriented array)."""
  from nibabel import orientations as ornt

  current = ornt.io_orientation(affine)
  transform = ornt.ornt_transform(current, ornt.axcodes2ornt(_TARGET))
  return transform, affine @ ornt.inv_ornt_aff(transform, shape)


def load_axial(path, *, affine: np.ndarray | None = None, shape=None, dtype=np.float32) -> AxialVolume:
  """Reads a 3-D NIfTI as an axial [S, H, W] volume (module docstring).

  Args:
    path: the .nii / .nii.gz file.
    affine: reorient with this affine instead of the file's own (a mask drawn
      on an image's voxel grid follows the image, whatever its header says).
    shape: the stored shape the file must have (the image's, for a mask).
    dtype: the data type of `get_fdata` (scaling applied).

  Raises:
    NiftiError naming the file: not 3-D; the stored last axis is not the
    superior-inferior axis (its slices would not be axial, and per-slice labels
    indexed by it would not belong to output slices); NaN or infinite voxels
    (their count).
  """
  import nibabel as nib
  from nibabel import orientations as ornt

  path = pathlib.Path(path)
  try:
    img = nib.load(str(path))
  except Exception as e:  # nibabel raises several types on truncated or foreign files
    raise NiftiError(f"{path}: cannot read NIfTI: {type(e).__name__}: {e}") from e
  expected, shape = shape, img.shape
  if len(shape) != 3:
    raise NiftiError(f"{path}: expected a 3-D volume, got shape {shape}")
  if expected is not None and tuple(expected) != tuple(shape):
    raise NiftiError(f"{path}: shape {tuple(shape)} differs from the expected {tuple(expected)}")
  given = np.asarray(img.affine if affine is None else affine, np.float64)
  transform, affine = reorientation(given, shape)
  codes = tuple(ornt.aff2axcodes(given))
  if int(transform[2, 0]) != 2:
    raise NiftiError(f"{path}: stored axes {''.join(codes)}: the last axis is not superior-inferior, "
                     "so its slices are not axial")
  try:
    data = img.get_fdata(dtype=dtype)
  except Exception as e:
    raise NiftiError(f"{path}: cannot read voxel data: {type(e).__name__}: {e}") from e
  bad = ~np.isfinite(data)
  if bad.any():
    # Cast to int16 HU (a build, prediction) they would become arbitrary values; no HU stands for "unknown".
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise NiftiError(f"{path}: {int(bad.sum())} of {bad.size} voxels are NaN or infinite (the first at stored index "
                     f"{first}, value {data[first]})")
  data = ornt.apply_orientation(data, transform)                # (x: L, y: P, z: S)
  n = shape[2]
  source = np.arange(n)[::-1] if transform[2, 1] < 0 else np.arange(n)
  axes = affine[:3, :3]
  normal = axes[:, 2] / np.linalg.norm(axes[:, 2])
  z = (affine[:3, 3] + np.outer(np.arange(n), axes[:, 2])) @ normal
  spacing = (float(np.linalg.norm(axes[:, 2])), float(np.linalg.norm(axes[:, 1])), float(np.linalg.norm(axes[:, 0])))
  return AxialVolume(np.ascontiguousarray(np.transpose(data, (2, 1, 0))), source.astype(np.int64), z, spacing,
                     codes, given, tuple(int(v) for v in shape))


def to_stored(volume: np.ndarray, axial: AxialVolume) -> np.ndarray:
  """Inverse of `load_axial`'s reorientation: an [S, H, W] array on the axial grid → the file's voxel order.

  The result has `axial.stored_shape` and lies on the input's voxel grid, so
  saved with `axial.affine` it overlays the input volume (a predicted mask).
  """
  from nibabel import orientations as ornt

  volume = np.asarray(volume)
  if sorted(volume.shape) != sorted(axial.stored_shape) or len(volume) != len(axial.source_slice):
    raise ValueError(f"to_stored: volume {volume.shape} is not on the axial grid of a {axial.stored_shape} file")
  back = ornt.ornt_transform(ornt.axcodes2ornt(_TARGET), ornt.io_orientation(axial.affine))
  stored = ornt.apply_orientation(np.transpose(volume, (2, 1, 0)), back)
  if stored.shape != tuple(axial.stored_shape):
    raise ValueError(f"to_stored: volume {volume.shape} reorients to {stored.shape}, not the file's {axial.stored_shape}")
  return np.ascontiguousarray(stored)
