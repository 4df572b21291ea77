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
from ich_jax.data.dicom.frames import FrameHeader, frame_headers
from ich_jax.data.dicom.geometry import (ORIENTATION_TOLERANCE, first_value, order_along_normal, require,
                                         slice_normal, tag_floats)
from ich_jax.data.dicom.hu import Rescale, apply_rescale, rescale_notes, rescale_of
from ich_jax.data.dicom.pixels import iter_frames

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
# One slice: its file and its header (a single-frame data set, or one frame's view of an enhanced one).
Slices = list[tuple[pathlib.Path, "Dataset | FrameHeader"]]


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
  sop_uids: list[str]  # per slice: an enhanced file's frames repeat its SOPInstanceUID
  files: list[pathlib.Path]  # per slice: an enhanced file's frames repeat its path
  orientation: np.ndarray  # [6]
  positions: np.ndarray  # [S, 3] ImagePositionPatient
  series_description: str = ""
  notes: list[str] = dataclasses.field(default_factory=list)  # HU conversions worth knowing (quirk, assumed intercept)
  # float32 [S, 2]: each slice's first WindowCenter, WindowWidth (nan where absent), in z order; what
  # intensity "dicom_window" (seed 003's public code) windows each slice by.
  windows: np.ndarray | None = None
  # Per slice, in z order: its 1-based frame number within its file (1 for a single-frame slice), so
  # ``(files[k], frame_numbers[k])`` or ``(sop_uids[k], frame_numbers[k])`` names slice k's pixels (a DICOM
  # SEG references an enhanced source's frames so). Empty (a Series built by hand): every slice single-frame.
  frame_numbers: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
  """What ``scan_series`` knows about a series without reading pixels."""

  series_uid: str
  description: str
  files: tuple[pathlib.Path, ...]
  # One slice's header: ImageType, ConvolutionKernel, SliceThickness, ... (an enhanced file's first frame).
  header: Dataset | FrameHeader


def scan_series(directory: PathLike | Iterable[PathLike]) -> dict[str, SeriesHeader]:
  """The series under ``directory`` (recursively), from headers only."""
  groups = _by_series(read_all(dicom_candidates(directory), stop_before_pixels=True))
  return {uid: SeriesHeader(uid, str(items[0][1].get("SeriesDescription", "")),
                            tuple(p for p, _ in items), frame_headers(items[0][1], items[0][0])[0])
          for uid, items in groups.items()}


def load_series(directory: PathLike | Iterable[PathLike], *, series_uid: str | None = None,
                assume_intercept: float | None = None) -> Series:
  """Reads one CT series from a folder (recursively) or from a list of files.

  Files are recognised by content, not name: a 'DICM' preamble, or a raw
  dataset starting with a group 0002/0008 tag. Files named ``*.dcm`` that are
  neither are errors; other non-DICOM files (CSV, README, .DS_Store) are
  ignored. Any transfer syntax ``pixels`` has a decoder for. An Enhanced CT
  file's frames are slices (``frames``: position, orientation, spacing,
  rescale and window from its functional groups), checked as single-frame
  slices are, with the frame named in errors. Slices are sorted by position
  along the normal, whatever the file names, on-disk or frame order. HU as
  ``slice_hu`` gives it: RSNA's 12-bit quirk
  corrected, and a slice without RescaleSlope/RescaleIntercept refused
  unless ``assume_intercept`` is given (``Series.notes`` then says so).

  Raises:
    DicomError: naming the file, tag and value: no DICOM files; several series
      and no ``series_uid``; ``series_uid`` absent; a required tag missing
      (RescaleSlope/RescaleIntercept included); a corrupt file; mixed
      Rows/Columns, orientation or PixelSpacing; two slices at the same
      position; a transfer syntax without an installed decoder (naming the
      package to install); several frames without functional groups.
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
  slices: Slices = [(path, h) for path, ds in items for h in frame_headers(ds, path)]
  first_path, first = slices[0]
  first_where = _where(*slices[0])
  orientation = tag_floats(first, "ImageOrientationPatient", 6, where=first_where)
  normal = slice_normal(orientation, strict=True, where=f"{first_where}: ImageOrientationPatient")
  shape = (int(require(first, "Rows", first_path)), int(require(first, "Columns", first_path)))
  pixel_spacing = tag_floats(first, "PixelSpacing", 2, where=first_where)
  positions, rescales = _check_slices(slices, orientation, shape, pixel_spacing, assume_intercept)

  order = order_along_normal(positions, normal, strict=True, names=[_where(*s) for s in slices])
  hu = _decode(slices, order.index, rescales, shape)
  slices = [slices[i] for i in order.index]
  thickness = first.get("SliceThickness")
  thickness = float("nan") if thickness in (None, "") else float(thickness)
  gap = order.gap if len(slices) > 1 else thickness

  return Series(
      hu=hu,
      z_positions=order.z,
      spacing=(gap, float(pixel_spacing[0]), float(pixel_spacing[1])),
      slice_thickness=thickness,
      study_uid=str(first.get("StudyInstanceUID")),
      series_uid=str(first.get("SeriesInstanceUID")),
      patient_id=str(first.get("PatientID", "")),
      sop_uids=[str(h.get("SOPInstanceUID")) for _, h in slices],
      files=[p for p, _ in slices],
      orientation=orientation,
      positions=order.positions,
      series_description=str(first.get("SeriesDescription", "")),
      notes=rescale_notes(rescales, assume_intercept),
      windows=np.asarray([(first_value(h.get("WindowCenter")), first_value(h.get("WindowWidth")))
                          for _, h in slices], np.float32).reshape(-1, 2),
      frame_numbers=[h.frame_number if isinstance(h, FrameHeader) else 1 for _, h in slices],
  )


def _where(path: pathlib.Path, header) -> str:
  """What an error names for one slice: its file, and its frame for an enhanced file's."""
  return header.filename if isinstance(header, FrameHeader) else str(path)


def _check_slices(slices: Slices, orientation: np.ndarray, shape: tuple[int, int], pixel_spacing: np.ndarray,
                  assume_intercept: float | None) -> tuple[np.ndarray, list[Rescale]]:
  """Every slice's tags against the first slice's; (ImagePositionPatient [S, 3], Rescale per slice)."""
  first_where = _where(*slices[0])
  positions = np.empty((len(slices), 3))
  rescales = []
  for i, (path, ds) in enumerate(slices):
    where = _where(path, ds)
    for tag in REQUIRED_TAGS:
      require(ds, tag, where)
    # Checked with the other tags, before any pixel is decoded.
    rescales.append(rescale_of(ds, assume_intercept=assume_intercept))
    if "PixelData" not in ds:
      raise DicomError(f"{path}: missing required tag PixelData")
    rows_cols = (int(ds.get("Rows")), int(ds.get("Columns")))
    if rows_cols != shape:
      raise DicomError(f"{path}: Rows/Columns {rows_cols[0]}x{rows_cols[1]} differ from "
                       f"{shape[0]}x{shape[1]} in {first_where}")
    o = tag_floats(ds, "ImageOrientationPatient", 6, where=where)
    if not np.allclose(o, orientation, atol=ORIENTATION_TOLERANCE):
      raise DicomError(f"{where}: ImageOrientationPatient {o.tolist()} differs from "
                       f"{orientation.tolist()} in {first_where}")
    ps = tag_floats(ds, "PixelSpacing", 2, where=where)
    if not np.allclose(ps, pixel_spacing, rtol=1e-4):
      raise DicomError(f"{where}: PixelSpacing {ps.tolist()} differs from "
                       f"{pixel_spacing.tolist()} in {first_where}")
    positions[i] = tag_floats(ds, "ImagePositionPatient", 3, where=where)
  return positions, rescales


def _decode(slices: Slices, order: Sequence[int], rescales: Sequence[Rescale], shape: tuple[int, int]) -> np.ndarray:
  """The slices' pixels in HU, rounded and clipped to int16 [S, H, W], at their sorted place (``order``).

  Each file is decoded once, its frames in file order, each frame written to its slot: an enhanced file
  of thousands of frames never holds its stored values and the volume at once.
  """
  slot = {s: k for k, s in enumerate(order)}
  hu = np.empty((len(slices), *shape), np.int16)
  info = np.iinfo(np.int16)
  by_file: dict[int, list[int]] = {}  # id(data set) -> its slices, in frame order
  for i, (_, h) in enumerate(slices):
    by_file.setdefault(id(h.dataset if isinstance(h, FrameHeader) else h), []).append(i)
  for members in by_file.values():
    path, h = slices[members[0]]
    ds = h.dataset if isinstance(h, FrameHeader) else h
    decoded = 0
    for i, stored in zip(members, iter_frames(ds, path)):
      values = apply_rescale(stored, rescales[i])
      np.clip(np.rint(values), info.min, info.max, out=values)
      hu[slot[i]] = values
      decoded += 1
    if decoded != len(members):
      raise DicomError(f"{path}: PixelData holds {decoded} frames, NumberOfFrames says {len(members)}")
  return hu
