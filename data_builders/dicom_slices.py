"""DICOM slices as the builders read them: tolerant headers, order along the normal, pixels in HU.

Tolerant (`ich_jax.data.dicom.geometry` with strict=False): a slice that
cannot be placed is skipped with its reason, duplicate positions and uneven
gaps are noted, and the build goes on; the report lists them all. Pixels go
through the reader prediction uses (`ich_jax.data.dicom`), so HU is the same.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import pathlib
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from data_builders.build_report import Result, reason
from ich_jax.data import dicom
from ich_jax.data.dicom import geometry


@dataclasses.dataclass(frozen=True, slots=True)
class SliceHeader:
  """The header fields a builder needs to place a slice; read without pixels."""
  path: str
  sop_uid: str
  patient_id: str
  study_uid: str
  series_uid: str
  position: tuple[float, float, float]
  orientation: tuple[float, ...]
  pixel_spacing: tuple[float, float]
  rows: int
  cols: int
  slice_thickness: float            # nan if absent
  window: tuple[float, float]       # first WindowCenter, first WindowWidth; nan if absent


# RSNA's UIDs are "ID_<hex>", not valid UIDs (datasets.md): pydicom warns and logs
# on every access, hundreds of thousands of times per build. Only that message is silenced.
_UID_WARNING = "Invalid value for VR UI"


class _NoUidWarning(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_UID_WARNING)


class quiet:
  """Context: pydicom's invalid-UID warning silenced (warnings and the "pydicom" logger), nothing else."""

  _filter = _NoUidWarning()

  def __enter__(self):
    self._ctx = warnings.catch_warnings()
    self._ctx.__enter__()
    warnings.filterwarnings("ignore", message=_UID_WARNING)
    logging.getLogger("pydicom").addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    logging.getLogger("pydicom").removeFilter(self._filter)
    return self._ctx.__exit__(*exc)


def _tag_floats(ds, path, keyword: str, n: int) -> tuple[float, ...]:
  return tuple(geometry.tag_floats(ds, keyword, n, where=path).tolist())


def _tag_text(ds, path, keyword: str) -> str:
  value = ds.get(keyword)
  if value is None or str(value).strip() == "":
    raise dicom.DicomError(f"{path}: missing required tag {keyword}")
  return str(value).strip()


def slice_header(path, ds) -> SliceHeader:
  """A SliceHeader from a read header; DicomError naming the file and tag if one is missing or malformed."""
  o = _tag_floats(ds, path, "ImageOrientationPatient", 6)
  if geometry.slice_normal(o) is None:
    raise dicom.DicomError(f"{path}: ImageOrientationPatient {list(o)} has parallel or zero directions")
  rows, cols = ds.get("Rows"), ds.get("Columns")
  if not rows or not cols:
    raise dicom.DicomError(f"{path}: missing required tag {'Rows' if not rows else 'Columns'}")
  return SliceHeader(
      path=str(path), sop_uid=_tag_text(ds, path, "SOPInstanceUID"),
      patient_id=str(ds.get("PatientID", "") or "").strip(),
      study_uid=_tag_text(ds, path, "StudyInstanceUID"), series_uid=_tag_text(ds, path, "SeriesInstanceUID"),
      position=_tag_floats(ds, path, "ImagePositionPatient", 3), orientation=o,
      pixel_spacing=_tag_floats(ds, path, "PixelSpacing", 2), rows=int(rows), cols=int(cols),
      slice_thickness=geometry.first_value(ds.get("SliceThickness")),
      window=(geometry.first_value(ds.get("WindowCenter")), geometry.first_value(ds.get("WindowWidth"))))


def read_slice_header(path) -> SliceHeader:
  with quiet():
    return slice_header(path, dicom.read_header(path))


def read_slice_headers(paths: Sequence) -> Result:
  """Worker task: headers of many files; unreadable ones are skipped with the reason."""
  out = Result()
  for path in paths:
    try:
      out.examples.append(read_slice_header(path))
    except dicom.DicomError as e:
      out.skipped.append((path, reason(e, path)))
  return out


@dataclasses.dataclass
class OrderedSeries:
  slices: list[SliceHeader]      # ascending along the normal; ties by SOPInstanceUID
  z: np.ndarray                  # float64 [S]
  gap: float                     # median positive gap (mm); nan for one slice
  thickness: float               # SliceThickness (median over slices), else the gap
  rejected: list[tuple[str, str]]
  notes: list[tuple[str, str]]


def order_slices(slices: Sequence[SliceHeader]) -> OrderedSeries:
  """Sorts one series along its normal (datasets.md, RSNA "Slice order"; `geometry.order_along_normal`).

  The normal is cross(row, column) of the series' most common orientation; a
  slice with another orientation cannot be placed and is rejected (a reason,
  not an error). Duplicate positions are kept, ordered by SOPInstanceUID, and
  noted; irregular gaps are noted.
  """
  keys = [geometry.orientation_key(s.orientation) for s in slices]
  counts = geometry.orientation_counts(s.orientation for s in slices)
  majority = max(counts, key=lambda k: (counts[k], k))
  # The normal from a slice's own cosines: the rounded key would move z by ~1e-3 mm per 100 mm.
  normal = geometry.slice_normal(next(s.orientation for k, s in zip(keys, slices) if k == majority))
  kept, rejected = [], []
  for k, s in zip(keys, slices):
    if np.allclose(k, majority, atol=geometry.ORIENTATION_TOLERANCE * 10):
      kept.append(s)
    else:
      rejected.append((s.path, f"ImageOrientationPatient {list(s.orientation)} differs from the series' "
                                f"{list(majority)} ({counts[majority]} of {len(slices)} slices)"))
  order = geometry.order_along_normal([s.position for s in kept], normal, tiebreak=[s.sop_uid for s in kept])
  kept, z, gaps, gap = [kept[i] for i in order.index], order.z, order.gaps, order.gap
  notes = []
  for i in order.duplicates:
    notes.append((kept[i + 1].path, f"duplicate slice position z={z[i]:.3f} mm, also {kept[i].path}; "
                                    "both kept, ordered by SOPInstanceUID"))
  if gaps.size and (gaps.max() > 1.5 * gap or gaps.min() < gap / 1.5):
    notes.append((kept[0].path, f"series {kept[0].series_uid}: varying slice gaps {gaps.min():.3f}–"
                                f"{gaps.max():.3f} mm (median {gap:.3f}); z_positions carry them"))
  tags = [s.slice_thickness for s in kept if math.isfinite(s.slice_thickness) and s.slice_thickness > 0]
  thickness = float(np.median(tags)) if tags else gap
  return OrderedSeries(kept, z, gap, thickness, rejected, notes)


def mixed_matrix(slices: Sequence[SliceHeader]) -> list[tuple[str, str]]:
  """(file, reason) for every slice of a series whose slices differ in Rows/Columns; [] when they agree.

  Resizing each slice to the stored size on its own would stack different
  fields of view as one volume, with one pixel spacing; `dicom.load_series`
  (prediction) refuses such a series, so a build skips it, naming the sizes.
  """
  sizes = collections.Counter((s.rows, s.cols) for s in slices)
  if len(sizes) < 2:
    return []
  example = {}
  for s in slices:
    example.setdefault((s.rows, s.cols), s.path)
  summary = "; ".join(f"{r}x{c}: {n} slice{'s' * (n > 1)}, e.g. {example[(r, c)]}"
                      for (r, c), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))
  return [(s.path, f"Rows/Columns {s.rows}x{s.cols}, but series {s.series_uid} mixes matrix sizes ({summary}): "
                   "series not built") for s in slices]


def read_pixels(path, hu_fn: Callable = dicom.to_hu):
  """`hu_fn(dataset)` of one file (default: HU, float32); DicomError naming the file and transfer syntax on failure."""
  with quiet():
    ds = dicom.read_dataset(pathlib.Path(path))  # same content sniffing as load_series
    if ds is None:
      raise dicom.DicomError(f"{path}: not a DICOM file")
    if "PixelData" not in ds:
      raise dicom.DicomError(f"{path}: missing required tag PixelData")
    try:
      return hu_fn(ds)
    except dicom.DicomError:
      raise
    except Exception as e:  # decoders raise anything: name the file and the syntax
      meta = getattr(ds, "file_meta", None)
      syntax = meta.get("TransferSyntaxUID", "?") if meta is not None else "?"
      name = getattr(syntax, "name", syntax)
      raise dicom.DicomError(f"{path}: cannot decode PixelData (TransferSyntaxUID {name}): "
                             f"{type(e).__name__}: {e}") from e
