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
spacing, a slice without RescaleSlope/RescaleIntercept (unless an intercept
is assumed), values that are not HU of a head (air inside the field of view
and brain measured, `measure_hu`), and, when asked, an incomplete series.

`Study.completeness` says whether the series may lack slices (`completeness`):
unreadable files beside its slices, gaps in InstanceNumber, fewer slices than
ImagesInAcquisition, or a z coverage too short for a head.

`Study.records()` gives the slices in the slice schema the input pipeline
reads (`image` int16 HU, `series_id`, `slice_index`, ...), so prediction
preprocesses exactly as training and evaluation do; `Study.mask_image`
puts a predicted [S, H, W] mask back on the input's voxel grid as NIfTI.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ich_jax.data import dicom, nifti, series_selection

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Gaps between neighbouring slices may differ from the median by this much (mm, or this fraction of the
# median, whichever is larger) before the spacing counts as inconsistent: DS rounding and gantry tilt stay far below.
GAP_TOLERANCE_MM = 0.1
GAP_TOLERANCE_FRACTION = 0.05
# HU plausibility (`measure_hu`), for DICOM and NIfTI alike. Scanners write -2000, -2048 or -3024 HU outside the
# reconstruction circle; nothing imaged reads that low, so lower values are padding, not air.
PADDING_BELOW_HU = -1500.0
# Air inside the field of view: the 1st percentile of the voxels in the reconstruction circle. Air is -1000 HU;
# noise and the -1024 floor many scanners clip to move that percentile by tens of HU. A series whose Rescale
# tags were lost reads it near 0 (unsigned storage, +1024); RSNA's uncorrected 12-bit quirk near +3000.
AIR_PERCENTILE = 1.0
AIR_HU_RANGE = (-1200.0, -800.0)
# Soft tissue: the voxels this far above the measured air (-74 to +76 HU when air reads -1024), leaving out fat
# (~-100 HU) and bone. Relative to the air, so that a shifted study reports where its tissue reads.
SOFT_TISSUE_ABOVE_AIR_HU = (950.0, 1100.0)
# Their median is the brain's (white matter 20-30, grey 30-45 HU), pulled a little by CSF, muscle and blood.
BRAIN_HU_RANGE = (10.0, 60.0)
# Completeness: a series of slices at most COVERAGE_MAX_GAP_MM apart (today's reconstructions) whose first and
# last slices are less than MIN_COVERAGE_MM apart cannot hold a head (skull base to vertex is ~120-150 mm in
# adults). Sparser series (older sequential 7-10 mm protocols) are left to the other checks.
MIN_COVERAGE_MM = 80.0
COVERAGE_MAX_GAP_MM = 5.0


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
  hu_check: dict | None = None      # `measure_hu`'s air and brain, the expected ranges, and whether they fit
  completeness: dict | None = None  # `completeness`: status "complete" or "incomplete", reasons, z coverage, ...

  @property
  def num_slices(self) -> int:
    return len(self.hu)

  def records(self) -> list[dict]:
    """The slices in the slice schema (`ich_jax.data.pipeline`), one record per slice, in z order."""
    spacing = np.asarray(self.spacing[1:], np.float32)
    records = [{"image": self.hu[i], "series_id": self.series_id, "study_id": self.study_id, "slice_index": i,
                "z_position": np.float32(self.z_positions[i]), "pixel_spacing": spacing,
                "slice_thickness": np.float32(self.slice_thickness)} for i in range(self.num_slices)]
    # DICOM: each slice's header window (intensity "dicom_window"); a NIfTI file has none.
    windows = getattr(self.geometry, "windows", None)
    if windows is not None:
      for record, window in zip(records, windows):
        record["dicom_window"] = window
    return records

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
               allow_uneven_spacing: bool = False, require_hu: bool = True, assume_intercept: float | None = None,
               min_coverage_mm: float = MIN_COVERAGE_MM, coverage_max_gap_mm: float = COVERAGE_MAX_GAP_MM,
               require_complete: bool = False, check_size: Callable[[int, int, int], None] | None = None) -> Study:
  """Reads a DICOM folder or a NIfTI file (see the module docstring).

  Args:
    min_slices: series with fewer slices are rejected ("too few slices"). 1
      lets a single slice be a study; a series of a few slices is often a
      localizer, which ImageType already rejects.
    preferred_thickness_mm: among acceptable series, the SliceThickness to prefer.
    allow_uneven_spacing: accept varying slice gaps (volumes then use the median gap).
    require_hu: refuse a study whose air or brain do not read where HU puts
      them (`measure_hu`); False keeps it with a note.
    assume_intercept: DICOM slices without RescaleSlope/RescaleIntercept are
      read with slope 1 and this intercept (noted) instead of refused.
    min_coverage_mm, coverage_max_gap_mm: the z coverage a series of slices at
      most `coverage_max_gap_mm` apart needs to count as a whole head.
    require_complete: refuse an incomplete series (`completeness`) instead of
      reading it with `completeness["status"] == "incomplete"`.
    check_size: called as check_size(slices, rows, columns) from the headers
      before any pixel is read; raises StudyError to refuse a study too large
      for memory (an enhanced CT of thousands of frames) instead of reading it.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise StudyError(f"{path}: no such file or folder")
  if path.is_file():
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
      raise StudyError(f"{path}: not a folder of DICOM files nor a NIfTI file (.nii, .nii.gz)")
    if check_size is not None:
      _check_size(check_size, path, *_nifti_size(path))
    study, dropped, headers = _read_nifti(path), (), ()
  else:
    policy = series_selection.SelectionPolicy(preferred_thickness_mm=preferred_thickness_mm, min_slices=min_slices)
    study, dropped, headers = _read_dicom(path, policy, allow_uneven_spacing, assume_intercept, check_size)
  _check_hu(study, require_hu)
  study.completeness = completeness(study.z_positions, study.spacing[0], headers=headers, dropped=dropped,
                                    min_coverage_mm=min_coverage_mm, coverage_max_gap_mm=coverage_max_gap_mm)
  if require_complete and study.completeness["status"] != "complete":
    raise StudyError(f"{path}: incomplete series {study.series_id} ({study.description!r}): "
                     + "; ".join(study.completeness["reasons"]) + " (refused by --strict; without it the study is "
                     "predicted and reported as incomplete)")
  return study


def _read_dicom(folder: pathlib.Path, policy, allow_uneven_spacing: bool, assume_intercept: float | None,
                check_size: Callable[[int, int, int], None] | None = None):
  """(the Study, unreadable files that may be its slices [(path, why)], the headers of its slices)."""
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
  items = by_series[selection.series_uid]
  if check_size is not None:
    header = items[0][1]
    frames = sum(_int_tag(ds, "NumberOfFrames") or 1 for _, ds in items)
    _check_size(check_size, folder, frames, _int_tag(header, "Rows") or 0, _int_tag(header, "Columns") or 0)
  try:
    series = dicom.load_series([p for p, _ in items], assume_intercept=assume_intercept)
  except dicom.RescaleMissing as e:
    raise StudyError(f"{folder}: series {selection.series_uid}: {e}; pass --assume-rescale-intercept (e.g. -1024) "
                     "to read the stored values with that intercept") from e
  except dicom.DicomError as e:
    raise StudyError(f"{folder}: series {selection.series_uid}: {e}") from e
  notes = [f"unreadable file {p}: {why}" for p, why in unreadable] + series.notes
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
  study = Study(path=folder, source="dicom", hu=series.hu, z_positions=series.z_positions, spacing=series.spacing,
                slice_thickness=series.slice_thickness, study_id=series.study_uid, series_id=series.series_uid,
                description=series.series_description, slice_uids=list(series.sop_uids),
                source_index=np.arange(len(series.hu), dtype=np.int64), selection=selection.to_dict(),
                notes=notes, geometry=series)
  return study, _dropped(unreadable, series.files), [ds for _, ds in items]


def _dropped(unreadable, files) -> list[tuple[pathlib.Path, str]]:
  """The unreadable files that may be slices of the series: in a folder holding its slices, and DICOM by content
  (a corrupt or cut-short file) or by name. A file that is not DICOM at all (.DS_Store, a lock file) is not."""
  folders = {pathlib.Path(f).parent for f in files}
  return [(p, why) for p, why in unreadable if p.parent in folders
          and (not why.startswith("not a DICOM file") or p.suffix.lower() in dicom.DICOM_SUFFIXES)]


def _check_size(check: Callable[[int, int, int], None], path: pathlib.Path, slices: int, rows: int, cols: int):
  try:
    check(slices, rows, cols)
  except StudyError as e:
    raise StudyError(f"{path}: {e}") from None


def _nifti_size(path: pathlib.Path) -> tuple[int, int, int]:
  """(slices, rows, columns) from a NIfTI header, without reading the voxels (the third stored axis as slices)."""
  import nibabel as nib

  try:
    shape = tuple(int(n) for n in nib.load(str(path)).shape[:3]) + (1, 1)
  except Exception as e:  # nibabel raises several types on a damaged header; the read below names it
    raise StudyError(f"{path}: unreadable NIfTI header: {type(e).__name__}: {e}") from e
  return shape[2], shape[1], shape[0]


def _read_nifti(path: pathlib.Path) -> Study:
  try:
    axial = nifti.load_axial(path)   # refuses NaN and infinite voxels, which no int16 can hold
  except nifti.NiftiError as e:
    raise StudyError(str(e)) from e
  info = np.iinfo(np.int16)
  hu = np.clip(np.rint(axial.data), info.min, info.max).astype(np.int16)
  name = path.name[:-len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
  return Study(path=path, source="nifti", hu=hu, z_positions=axial.z_positions, spacing=axial.spacing,
               slice_thickness=axial.spacing[0], study_id=name, series_id=name,
               description=f"NIfTI {''.join(axial.axcodes)} {axial.stored_shape}", slice_uids=[""] * len(hu),
               source_index=axial.source_slice, geometry=axial)


# --- HU plausibility -------------------------------------------------------------------------------------------


def field_of_view(shape) -> np.ndarray:
  """bool [H, W]: the circle a CT scanner reconstructs, inscribed in the matrix; outside it is padding."""
  h, w = shape
  rows, cols = np.ogrid[:h, :w]
  radius = min(h, w) / 2
  return (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2 <= radius ** 2


def measure_hu(hu: np.ndarray) -> tuple[float, float]:
  """(air, brain) of an int16 [S, H, W] volume: where a head CT in HU has them at about -1000 and 20-45.

  Air is the AIR_PERCENTILE-th percentile of the voxels inside the field of
  view above PADDING_BELOW_HU; brain is the median of the voxels
  SOFT_TISSUE_ABOVE_AIR_HU above that air. nan where no voxel qualifies. Exact
  (a histogram of the int16 values), linear in the voxels.
  """
  hu = np.asarray(hu)
  if hu.dtype != np.int16:
    raise ValueError(f"measure_hu takes an int16 [S, H, W] volume, got {hu.dtype} {hu.shape}")
  fov = field_of_view(hu.shape[1:])
  counts = np.zeros(65536, np.int64)
  for image in hu:   # slice by slice: bincount's intp copy of a whole study would take 8 bytes a voxel
    counts += np.bincount(image[fov].view(np.uint16) ^ np.uint16(0x8000), minlength=65536)   # int16 + 32768
  counts[:int(PADDING_BELOW_HU) + 32768 + 1] = 0
  if not counts.any():
    return float("nan"), float("nan")
  air = _quantile(counts, AIR_PERCENTILE / 100)
  lo, hi = (int(np.clip(air + d + 32768, 0, 65535)) for d in SOFT_TISSUE_ABOVE_AIR_HU)
  band = np.zeros_like(counts)
  band[lo:hi + 1] = counts[lo:hi + 1]
  return float(air), float(_quantile(band, 0.5)) if band.any() else float("nan")


def _quantile(counts: np.ndarray, q: float) -> int:
  """The value (int16, from the offset histogram) below which a fraction q of the counted voxels lie."""
  cdf = np.cumsum(counts)
  return int(np.searchsorted(cdf, q * cdf[-1], side="left")) - 32768


def _check_hu(study: Study, require_hu: bool) -> None:
  air, brain = measure_hu(study.hu)
  plausible = bool(AIR_HU_RANGE[0] <= air <= AIR_HU_RANGE[1] and BRAIN_HU_RANGE[0] <= brain <= BRAIN_HU_RANGE[1])
  study.hu_check = {"air_hu": None if np.isnan(air) else air, "brain_hu": None if np.isnan(brain) else brain,
                    "air_expected": list(AIR_HU_RANGE), "brain_expected": list(BRAIN_HU_RANGE), "plausible": plausible}
  if plausible:
    return
  a, b = AIR_HU_RANGE, BRAIN_HU_RANGE
  lo, hi = SOFT_TISSUE_ABOVE_AIR_HU
  measured = (f"air inside the field of view reads {_hu(air)} (percentile {AIR_PERCENTILE:g}; expected "
              f"{a[0]:g} to {a[1]:g}) and brain {_hu(brain)} (median of the voxels {lo:g}-{hi:g} HU above that "
              f"air; expected {b[0]:g} to {b[1]:g})")
  where = "the file's scl_slope/scl_inter" if study.source == "nifti" else "RescaleSlope/RescaleIntercept"
  if require_hu:
    raise StudyError(f"{study.path}: values are not HU of a head CT: {measured}; check {where}, or pass "
                     "--allow-implausible-hu to predict anyway")
  study.notes.append(f"values may not be HU: {measured}; predicted anyway (--allow-implausible-hu)")


def _hu(value: float) -> str:
  return "nothing (no voxel qualifies)" if np.isnan(value) else f"{value:+.0f} HU"


# --- Completeness ----------------------------------------------------------------------------------------------


def completeness(z_positions, gap_mm: float, *, headers=(), dropped=(), min_coverage_mm: float = MIN_COVERAGE_MM,
                 coverage_max_gap_mm: float = COVERAGE_MAX_GAP_MM) -> dict:
  """Whether a series may lack slices, and why: the `Study.completeness` block.

  Reasons (any makes it "incomplete"): `dropped` files (unreadable files that
  may be its slices); InstanceNumber gaps (when every header has one, at the
  series' own step, so a series numbered 1, 3, 5 ... is whole); fewer slices
  than ImagesInAcquisition says (when every header says the same; an
  acquisition split into several series can say more than one holds, hence a
  reason to look, not an error); a z coverage (first to last slice position)
  under `min_coverage_mm` where the slice gap is at most `coverage_max_gap_mm`
  (or unknown, as for one slice).
  """
  z = np.asarray(z_positions, np.float64)
  coverage = float(z[-1] - z[0]) if z.size else 0.0
  reasons = []
  if dropped:
    listed = "; ".join(f"{pathlib.Path(p).name}: {why}" for p, why in list(dropped)[:3])
    more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
    reasons.append(f"{len(dropped)} unreadable file{'s' * (len(dropped) > 1)} beside the series' slices, maybe "
                   f"slices of it, dropped ({listed}{more})")
  missing = _missing_instance_numbers(headers)
  if missing:
    listed = ", ".join(str(n) for n in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    reasons.append(f"InstanceNumber {listed} missing ({len(missing)} slice{'s' * (len(missing) > 1)})")
  expected = _common_int(headers, "ImagesInAcquisition")
  if expected is not None and expected > len(z):
    reasons.append(f"ImagesInAcquisition is {expected} but the series has {len(z)} slices")
  if not gap_mm > coverage_max_gap_mm and coverage < min_coverage_mm:
    gap = f"{gap_mm:.3g} mm slice gap" if np.isfinite(gap_mm) else "unknown slice gap"
    reasons.append(f"z coverage {coverage:.1f} mm ({len(z)} slice{'s' * (len(z) != 1)}, {gap}) is under the "
                   f"{min_coverage_mm:g} mm a head needs")
  return {"status": "incomplete" if reasons else "complete", "reasons": reasons, "z_coverage_mm": coverage,
          "num_slices": int(len(z)), "missing_instance_numbers": missing, "images_in_acquisition": expected,
          "dropped_files": [{"file": str(p), "reason": why} for p, why in dropped],
          "min_coverage_mm": min_coverage_mm, "coverage_max_gap_mm": coverage_max_gap_mm}


def _int_tag(header, keyword: str) -> int | None:
  value = header.get(keyword)
  try:
    return int(value) if value not in (None, "") else None
  except (TypeError, ValueError):
    return None


def _common_int(headers, keyword: str) -> int | None:
  """The tag's value when every header has the same one; else None."""
  values = {_int_tag(h, keyword) for h in headers}
  return values.pop() if len(values) == 1 and None not in values else None


def _missing_instance_numbers(headers) -> list[int] | None:
  """InstanceNumbers absent between the series' lowest and highest, at its smallest step; None when a header
  lacks one or two share one (then the numbers say nothing about gaps)."""
  numbers = [_int_tag(h, "InstanceNumber") for h in headers]
  if not numbers or None in numbers or len(set(numbers)) != len(numbers):
    return None
  numbers = sorted(numbers)
  if len(numbers) < 2:
    return []
  step = int(np.diff(numbers).min())
  return sorted(set(range(numbers[0], numbers[-1] + 1, step)) - set(numbers))

