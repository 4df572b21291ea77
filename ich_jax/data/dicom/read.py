"""Reading one CT series from a folder or a list of files into HU, sorted along the slice normal.

Strict (``geometry``'s strict=True): a series is one volume or a DicomError
naming the file, the tag and the value. Series *selection* (CQ500 patients
hold thin/thick, plain/contrast, bone/soft series) is not done here:
``scan_series`` lists a folder's series from headers only, a selection rule
picks one, and ``load_series(files)`` or ``load_series(directory,
series_uid=...)`` reads it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from ich_jax.data.dicom.files import DicomError, PathLike, dicom_candidates, read_all
from ich_jax.data.dicom.geometry import (ORIENTATION_TOLERANCE, first_value, order_along_normal, require,
                                         slice_normal, tag_floats)
from ich_jax.data.dicom.hu import Rescale, apply_rescale, rescale_notes, rescale_of

# Tags every slice of a series must carry for load_series to place it in 3-D.
REQUIRED_TAGS = (
  "SOPInstanceUID",
  "StudyInstanceUID",
  "SeriesInstanceUID",
  "ImagePositionPatient",
  "ImageOrientationPatient",
  "PixelSpacing",
  "Rows",
  "Columns",
)

Items = list[tuple[pathlib.Path, Dataset]]


@dataclasses.dataclass
class Series:
  """One CT series, sorted along the slice normal."""

  hu: np.ndarray  # int16 [S, H, W]
  z_positions: np.ndarray  # float64 [S], ascending projection of ImagePositionPatient on the normal
  spacing: tuple[float, float, float]  # (gap from positions, row spacing, column spacing) mm
  slice_thickness: float  # the SliceThickness tag; nan if absent
  study_uid: str
  series_uid: str
  patient_id: str
  sop_uids: list[str]
  files: list[pathlib.Path]
  orientation: np.ndarray  # [6]
  positions: np.ndarray  # [S, 3] ImagePositionPatient
  series_description: str = ""
  notes: list[str] = dataclasses.field(default_factory=list)  # HU conversions worth knowing (quirk, assumed intercept)
  # float32 [S, 2]: each slice's first WindowCenter, WindowWidth (nan where absent), in z order; what
  # intensity "dicom_window" (seed 003's public code) windows each slice by.
  windows: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
  """What ``scan_series`` knows about a series without reading pixels."""

  series_uid: str
  description: str
  files: tuple[pathlib.Path, ...]
  header: Dataset  # one slice's header: ImageType, ConvolutionKernel, SliceThickness, ...


def scan_series(directory: PathLike | Iterable[PathLike]) -> dict[str, SeriesHeader]:
  """The series under ``directory`` (recursively), from headers only."""
  groups = _by_series(read_all(dicom_candidates(directory), stop_before_pixels=True))
  return {uid: SeriesHeader(uid, str(items[0][1].get("SeriesDescription", "")),
                            tuple(p for p, _ in items), items[0][1])
          for uid, items in groups.items()}


def load_series(directory: PathLike | Iterable[PathLike], *, series_uid: str | None = None,
                assume_intercept: float | None = None) -> Series:
  """Reads one CT series from a folder (recursively) or from a list of files.

  Files are recognised by content, not name: a 'DICM' preamble, or a raw
  dataset starting with a group 0002/0008 tag. Files named ``*.dcm`` that are
  neither are errors; other non-DICOM files (CSV, README, .DS_Store) are
  ignored. Slices are sorted by position along the normal, whatever the file
  names or on-disk order. HU as ``slice_hu`` gives it: RSNA's 12-bit quirk
  corrected, and a slice without RescaleSlope/RescaleIntercept refused
  unless ``assume_intercept`` is given (``Series.notes`` then says so).

  Raises:
    DicomError: naming the file, tag and value: no DICOM files; several series
      and no ``series_uid``; ``series_uid`` absent; a required tag missing
      (RescaleSlope/RescaleIntercept included); a corrupt file; mixed
      Rows/Columns, orientation or PixelSpacing; two slices at the same
      position.
  """
  candidates = dicom_candidates(directory)
  # Pixel data is deferred (read when decoded), so a folder holding several
  # series costs header parses for the series not chosen.
  groups = _by_series(read_all(candidates, stop_before_pixels=False, defer_size="64 KB"))
  where = directory if isinstance(directory, (str, os.PathLike)) else f"{len(candidates)} files"
  if not groups:
    raise DicomError(f"no DICOM files in {where}")
  if series_uid is None:
    if len(groups) > 1:
      raise DicomError(f"{len(groups)} series in {where}; pass series_uid=one of:\n" + _describe(groups))
    (series_uid,) = groups
  elif series_uid not in groups:
    raise DicomError(f"SeriesInstanceUID {series_uid} not in {where}; present:\n" + _describe(groups))
  return _assemble(groups[series_uid], assume_intercept)


def _by_series(items) -> dict[str, Items]:
  groups: dict[str, Items] = {}
  for path, ds in items:
    groups.setdefault(str(require(ds, "SeriesInstanceUID", path)), []).append((path, ds))
  return groups


def _describe(groups) -> str:
  return "\n".join(
      f"  {uid}  {str(items[0][1].get('SeriesDescription', ''))!r}  {len(items)} files"
      for uid, items in sorted(groups.items()))


def _assemble(items: Items, assume_intercept: float | None = None) -> Series:
  first_path, first = items[0]
  orientation = tag_floats(first, "ImageOrientationPatient", 6, where=first_path)
  normal = slice_normal(orientation, strict=True, where=f"{first_path}: ImageOrientationPatient")
  shape = (int(require(first, "Rows", first_path)), int(require(first, "Columns", first_path)))
  pixel_spacing = tag_floats(first, "PixelSpacing", 2, where=first_path)
  positions, rescales = _check_slices(items, orientation, shape, pixel_spacing, assume_intercept)

  order = order_along_normal(positions, normal, strict=True, names=[p for p, _ in items])
  items = [items[i] for i in order.index]
  rescales = [rescales[i] for i in order.index]
  thickness = first.get("SliceThickness")
  thickness = float("nan") if thickness in (None, "") else float(thickness)
  gap = order.gap if len(items) > 1 else thickness

  return Series(
      hu=_decode(items, rescales, shape),
      z_positions=order.z,
      spacing=(gap, float(pixel_spacing[0]), float(pixel_spacing[1])),
      slice_thickness=thickness,
      study_uid=str(first.StudyInstanceUID),
      series_uid=str(first.SeriesInstanceUID),
      patient_id=str(first.get("PatientID", "")),
      sop_uids=[str(ds.SOPInstanceUID) for _, ds in items],
      files=[p for p, _ in items],
      orientation=orientation,
      positions=order.positions,
      series_description=str(first.get("SeriesDescription", "")),
      notes=rescale_notes(rescales, assume_intercept),
      windows=np.asarray([(first_value(ds.get("WindowCenter")), first_value(ds.get("WindowWidth")))
                          for _, ds in items], np.float32).reshape(-1, 2),
  )


def _check_slices(items: Items, orientation: np.ndarray, shape: tuple[int, int], pixel_spacing: np.ndarray,
                  assume_intercept: float | None) -> tuple[np.ndarray, list[Rescale]]:
  """Every slice's tags against the first slice's; (ImagePositionPatient [S, 3], Rescale per slice)."""
  first_path = items[0][0]
  positions = np.empty((len(items), 3))
  rescales = []
  for i, (path, ds) in enumerate(items):
    for tag in REQUIRED_TAGS:
      require(ds, tag, path)
    # Checked with the other tags, before any pixel is decoded.
    rescales.append(rescale_of(ds, assume_intercept=assume_intercept))
    if "PixelData" not in ds:
      raise DicomError(f"{path}: missing required tag PixelData")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
      raise DicomError(f"{path}: NumberOfFrames is {frames}; multi-frame images are not supported")
    if (ds.Rows, ds.Columns) != shape:
      raise DicomError(f"{path}: Rows/Columns {ds.Rows}x{ds.Columns} differ from "
                       f"{shape[0]}x{shape[1]} in {first_path}")
    o = tag_floats(ds, "ImageOrientationPatient", 6, where=path)
    if not np.allclose(o, orientation, atol=ORIENTATION_TOLERANCE):
      raise DicomError(f"{path}: ImageOrientationPatient {o.tolist()} differs from "
                       f"{orientation.tolist()} in {first_path}")
    ps = tag_floats(ds, "PixelSpacing", 2, where=path)
    if not np.allclose(ps, pixel_spacing, rtol=1e-4):
      raise DicomError(f"{path}: PixelSpacing {ps.tolist()} differs from "
                       f"{pixel_spacing.tolist()} in {first_path}")
    positions[i] = tag_floats(ds, "ImagePositionPatient", 3, where=path)
  return positions, rescales


def _decode(items: Items, rescales: Sequence[Rescale], shape: tuple[int, int]) -> np.ndarray:
  """The sorted slices' pixels in HU, rounded and clipped to int16 [S, H, W]."""
  hu = np.empty((len(items), *shape), np.int16)
  info = np.iinfo(np.int16)
  for i, (path, ds) in enumerate(items):
    try:
      stored = ds.pixel_array
    except Exception as e:  # decoders raise anything: name the file
      raise DicomError(f"{path}: cannot decode PixelData "
                       f"(TransferSyntaxUID {ds.file_meta.get('TransferSyntaxUID', '?')}): "
                       f"{type(e).__name__}: {e}") from e
    values = apply_rescale(stored, rescales[i])
    np.clip(np.rint(values), info.min, info.max, out=values)
    hu[i] = values
  return hu
