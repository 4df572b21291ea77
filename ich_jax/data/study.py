"""A study to predict on: a folder a scanner wrote, or a NIfTI file, as one axial CT series in HU.

A DICOM folder may hold any file names, nested folders, several series mixed
(thin and thick, bone and soft kernels, reformats, localizers), compressed
pixel data and stray non-DICOM files. The series is chosen from headers by
`ich_jax.data.series_selection` (the rule the CQ500 builder uses; the choice
and the reasons travel with the study), read by `ich_jax.data.dicom` into HU
and sorted along the slice normal. A NIfTI file is reoriented by
`ich_jax.data.nifti.load_axial` to the same convention.

Errors name the folder or file and the reason: no such path, an empty
folder, no DICOM file, no CT series (every series and why it was rejected),
too few slices, slices of several studies in one folder, inconsistent slice
spacing, values that are not HU.

`Study.records()` gives the slices in the slice schema the input pipeline
reads (`image` int16 HU, `series_id`, `slice_index`, ...), so prediction
preprocesses exactly as training and evaluation do; `Study.mask_image`
puts a predicted [S, H, W] mask back on the input's voxel grid as NIfTI.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from ich_jax.data import dicom, nifti, series_selection

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Gaps between neighbouring slices may differ from the median by this much (mm, or this fraction of the
# median, whichever is larger) before the spacing counts as inconsistent: DS rounding and gantry tilt stay far below.
GAP_TOLERANCE_MM = 0.1
GAP_TOLERANCE_FRACTION = 0.05
# The lowest value of a head CT in HU is air, about -1000; a volume whose minimum is above this is not in HU.
HU_AIR_CHECK = -500.0


class StudyError(ValueError):
  """A study that cannot be read as one axial CT series; the message names the path and the reason."""


@dataclasses.dataclass
class Study:
  path: pathlib.Path
  source: str                       # "dicom" or "nifti"
  hu: np.ndarray                    # int16 [S, H, W], slices ascending along the normal
  z_positions: np.ndarray           # float64 [S] (mm)
  spacing: tuple[float, float, float]   # (slice gap, row spacing, column spacing) mm
  slice_thickness: float            # SliceThickness (DICOM; nan if absent) or the gap (NIfTI)
  study_id: str
  series_id: str
  description: str
  slice_uids: list[str]             # SOPInstanceUID per slice (DICOM), "" for NIfTI
  source_index: np.ndarray          # int64 [S]: NIfTI: the stored slice index of each slice; DICOM: 0…S-1
  selection: dict | None = None     # series_selection.Selection.to_dict() (DICOM)
  notes: list[str] = dataclasses.field(default_factory=list)
  geometry: Any = None              # dicom.Series or nifti.AxialVolume: where the voxels are

  @property
  def num_slices(self) -> int:
    return len(self.hu)

  def records(self) -> list[dict]:
    """The slices in the slice schema (`ich_jax.data.pipeline`), one record per slice, in z order."""
    spacing = np.asarray(self.spacing[1:], np.float32)
    return [{"image": self.hu[i], "series_id": self.series_id, "study_id": self.study_id, "slice_index": i,
             "z_position": np.float32(self.z_positions[i]), "pixel_spacing": spacing,
             "slice_thickness": np.float32(self.slice_thickness)} for i in range(self.num_slices)]

  def mask_image(self, mask: np.ndarray):
    """A uint8 [S, H, W] mask on this study's grid → a nibabel image in the input's geometry.

    DICOM: stored (column, row, slice) with the RAS affine of the series'
    ImagePositionPatient / ImageOrientationPatient / PixelSpacing
    (`dicom.nifti_affine`). NIfTI: the input's own voxel order and affine.
    """
    import nibabel as nib

    mask = np.asarray(mask, np.uint8)
    if mask.shape != self.hu.shape:
      raise ValueError(f"mask {mask.shape} is not on the study's grid {self.hu.shape}")
    if self.source == "dicom":
      data, affine = np.ascontiguousarray(np.transpose(mask, (2, 1, 0))), dicom.nifti_affine(self.geometry)
    else:
      data, affine = nifti.to_stored(mask, self.geometry), self.geometry.affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def read_study(path, *, min_slices: int = 1, preferred_thickness_mm: float = 5.0,
               allow_uneven_spacing: bool = False, require_hu: bool = True) -> Study:
  """Reads a DICOM folder or a NIfTI file (see the module docstring).

  Args:
    min_slices: series with fewer slices are rejected ("too few slices"). 1
      lets a single slice be a study; a series of a few slices is often a
      localizer, which ImageType already rejects.
    preferred_thickness_mm: among acceptable series, the SliceThickness to prefer.
    allow_uneven_spacing: accept varying slice gaps (volumes then use the median gap).
    require_hu: refuse a NIfTI volume whose minimum is above -500 (not HU).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise StudyError(f"{path}: no such file or folder")
  if path.is_file():
    if path.name.lower().endswith(NIFTI_SUFFIXES):
      return _read_nifti(path, require_hu=require_hu)
    raise StudyError(f"{path}: not a folder of DICOM files nor a NIfTI file (.nii, .nii.gz)")
  policy = series_selection.SelectionPolicy(preferred_thickness_mm=preferred_thickness_mm, min_slices=min_slices)
  return _read_dicom(path, policy, allow_uneven_spacing)


def _read_dicom(folder: pathlib.Path, policy, allow_uneven_spacing: bool) -> Study:
  files = [p for p in folder.rglob("*") if p.is_file()]
  if not files:
    raise StudyError(f"{folder}: empty folder (no files)")
  by_series, unreadable = series_selection.headers_in_folder(folder)
  if not by_series:
    detail = f"; unreadable: {unreadable[0][0].name}: {unreadable[0][1]}" if unreadable else ""
    raise StudyError(f"{folder}: no DICOM files among its {len(files)} files{detail}")
  selection = series_selection.select_series({uid: [ds for _, ds in items] for uid, items in by_series.items()},
                                             policy)
  if selection.series_uid is None:
    short = [c for c in selection.candidates if c.reasons and all("min_slices" in r for r in c.reasons)]
    if short:
      c = short[0].info
      raise StudyError(f"{folder}: too few slices: series {c.series_uid} ({c.description!r}) has {c.num_slices}, "
                       f"fewer than the minimum {policy.min_slices}; {selection.reason}")
    raise StudyError(f"{folder}: no CT series found: {selection.reason}")
  accepted_studies = sorted({c.info.study_uid for c in selection.candidates if c.accepted})
  if len(accepted_studies) > 1:
    raise StudyError(f"{folder}: slices of {len(accepted_studies)} studies ({', '.join(accepted_studies)}); put one "
                     "study per folder (and use --batch for a folder of study folders)")
  try:
    series = dicom.load_series([p for p, _ in by_series[selection.series_uid]])
  except dicom.DicomError as e:
    raise StudyError(f"{folder}: series {selection.series_uid}: {e}") from e
  notes = [f"unreadable file {p}: {why}" for p, why in unreadable]
  gaps = np.diff(series.z_positions)
  if gaps.size:
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median)
    k = int(np.argmax(deviation))
    if deviation[k] > max(GAP_TOLERANCE_MM, GAP_TOLERANCE_FRACTION * median):
      message = (f"inconsistent slice spacing in series {series.series_uid} ({series.series_description!r}): gaps "
                 f"{gaps.min():.4g} to {gaps.max():.4g} mm (median {median:.4g}); slices {k} and {k + 1} (z "
                 f"{series.z_positions[k]:.4g} and {series.z_positions[k + 1]:.4g} mm) are {gaps[k]:.4g} mm apart, "
                 "so a slice may be missing or the series mixes reconstructions")
      if not allow_uneven_spacing:
        raise StudyError(f"{folder}: {message}; pass --allow-uneven-spacing to predict anyway "
                         "(volumes then use the median gap)")
      notes.append(message)
  return Study(path=folder, source="dicom", hu=series.hu, z_positions=series.z_positions, spacing=series.spacing,
               slice_thickness=series.slice_thickness, study_id=series.study_uid, series_id=series.series_uid,
               description=series.series_description, slice_uids=list(series.sop_uids),
               source_index=np.arange(len(series.hu), dtype=np.int64), selection=selection.to_dict(),
               notes=notes, geometry=series)


def _read_nifti(path: pathlib.Path, *, require_hu: bool) -> Study:
  try:
    axial = nifti.load_axial(path)
  except nifti.NiftiError as e:
    raise StudyError(str(e)) from e
  data = axial.data
  if not np.isfinite(data).all():
    raise StudyError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
  info = np.iinfo(np.int16)
  hu = np.clip(np.rint(data), info.min, info.max).astype(np.int16)
  if require_hu and hu.min() > HU_AIR_CHECK:
    raise StudyError(f"{path}: does not look like CT in Hounsfield units: the lowest value is {int(hu.min())}, "
                     f"but air is about -1000 HU (check the file's scl_slope/scl_inter, or pass --allow-non-hu)")
  name = path.name[:-len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
  return Study(path=path, source="nifti", hu=hu, z_positions=axial.z_positions, spacing=axial.spacing,
               slice_thickness=axial.spacing[0], study_id=name, series_id=name,
               description=f"NIfTI {''.join(axial.axcodes)} {axial.stored_shape}", slice_uids=[""] * len(hu),
               source_index=axial.source_slice, geometry=axial)
