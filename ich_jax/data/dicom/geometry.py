"""Slice geometry from DICOM headers: the numeric tags it is read from, the slice normal, order and gaps.

One definition for every reader: the series reader (``load_series``:
prediction, synthetic_ich), series selection (CQ500 and prediction choose a
series from headers) and the real-dataset builders. Each reader names the
behaviour it needs:

  strict=True   a missing or malformed tag, a degenerate orientation, two
                slices at one position: DicomError naming the file, the tag
                and the value. A series read for prediction is one volume or
                nothing.
  strict=False  the same problems give None (nan for a number), or are
                returned for the caller to record: selection ranks series by
                whatever headers parse, and a build skips or notes a slice
                and goes on.

Conventions (datasets.md, RSNA "Slice order"): the normal is cross(row
direction, column direction) of ImageOrientationPatient; a slice's z is its
ImagePositionPatient projected on the normal, so a gantry-tilted series (its
positions step along the table, not the normal) sorts and spaces correctly.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from ich_jax.data.dicom.files import DicomError

# Two slices closer than this along the normal are the same position. DS values
# carry 16 characters, so written positions round-trip far below this.
POSITION_TOLERANCE_MM = 1e-3
# Direction cosines are stored with ~6 decimals by most scanners.
ORIENTATION_TOLERANCE = 1e-4


# --- Tag values ----------------------------------------------------------------


def is_multi(value) -> bool:
  """Whether a tag value holds several values (pydicom's MultiValue, a list): not a str or bytes."""
  return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def first_value(value) -> float:
  """A numeric tag's first value (WindowCenter "40\\40\\40" is 40); nan if absent or not a number."""
  if value is None or value == "":
    return float("nan")
  if is_multi(value):
    if not len(value):
      return float("nan")
    value = value[0]
  try:
    return float(value)
  except (TypeError, ValueError):
    return float("nan")


def require(header, keyword: str, where):
  """The value of ``keyword``; DicomError "``where``: missing required tag" if absent or empty."""
  value = header.get(keyword)
  if value is None or value == "":
    raise DicomError(f"{where}: missing required tag {keyword}")
  return value


def tag_floats(header, keyword: str, n: int, *, strict: bool = True, where="<dataset>") -> np.ndarray | None:
  """``n`` finite numbers from a multi-valued tag (ImagePositionPatient: 3), as float64.

  ``header`` is a pydicom Dataset or any mapping with ``.get(keyword)``.
  strict: a missing tag, a non-number or another count raises DicomError
  naming ``where``, the tag and the value; otherwise any of these gives None.
  """
  value = header.get(keyword)
  if value is None or value == "":
    if strict:
      raise DicomError(f"{where}: missing required tag {keyword}")
    return None
  try:
    out = np.asarray([float(v) for v in (value if is_multi(value) else [value])], np.float64)
  except (TypeError, ValueError) as e:
    if strict:
      raise DicomError(f"{where}: {keyword} is not numeric: {value!r}") from e
    return None
  if out.shape != (n,) or not np.isfinite(out).all():
    if strict:
      raise DicomError(f"{where}: {keyword} needs {n} finite numbers, got {value!r}")
    return None
  return out


# --- The slice normal ------------------------------------------------------------


def slice_normal(orientation: Sequence[float], *, strict: bool = False, where="") -> np.ndarray | None:
  """Unit normal cross(row, column) of an ImageOrientationPatient.

  Degenerate (not 6 values, or row and column directions parallel or zero):
  strict raises DicomError naming ``where``; otherwise None.
  """
  o = np.asarray(orientation, np.float64)
  if o.shape != (6,):
    if strict:
      raise DicomError(f"{where}: ImageOrientationPatient needs 6 values, got {o.tolist()}")
    return None
  normal = np.cross(o[:3], o[3:])
  norm = np.linalg.norm(normal)
  # Perpendicular unit cosines give |normal| = 1; below 0.5 they are within 30° of parallel: not a plane.
  if not np.isfinite(norm) or norm < 0.5:
    if strict:
      raise DicomError(f"{where}: ImageOrientationPatient {o.tolist()} has parallel or zero row/column directions")
    return None
  return normal / norm


def orientation_key(orientation: Sequence[float]) -> tuple[float, ...]:
  """An orientation rounded to 4 decimals: slices whose keys are equal share an orientation when counting."""
  return tuple(np.round(orientation, 4))


def orientation_counts(orientations: Iterable[Sequence[float]]) -> collections.Counter:
  """How many slices have each orientation (``orientation_key``), in order of first appearance."""
  return collections.Counter(orientation_key(o) for o in orientations)


# --- Order along the normal ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SliceOrder:
  """Slices sorted along the normal."""
  index: list[int]          # input indices, ascending along the normal (equal z: by the tie-break)
  z: np.ndarray             # float64 [S], the sorted positions along the normal (mm)
  positions: np.ndarray     # float64 [S, 3], ImagePositionPatient in that order
  duplicates: list[int]     # k: sorted slices k and k + 1 lie closer than POSITION_TOLERANCE_MM
  gaps: np.ndarray          # the neighbour gaps of at least POSITION_TOLERANCE_MM (duplicates left out)
  gap: float                # their median (mm); nan if none


def order_along_normal(positions, normal: np.ndarray, *, tiebreak: Sequence | None = None,
                       strict: bool = False, names: Sequence | None = None) -> SliceOrder:
  """Sorts slices by ImagePositionPatient projected on ``normal`` (datasets.md, RSNA "Slice order").

  Args:
    positions: ImagePositionPatient per slice, [S, 3].
    normal: the unit slice normal (``slice_normal``).
    tiebreak: per slice, what orders slices at exactly the same z (a builder:
      SOPInstanceUID); None keeps their input order.
    strict: two slices closer than POSITION_TOLERANCE_MM raise DicomError
      naming the closest pair (``names``: their files); otherwise they are
      kept and listed in ``SliceOrder.duplicates``.
  """
  positions = np.asarray(positions, np.float64).reshape(-1, 3)
  z = positions @ normal
  keys = range(len(z)) if tiebreak is None else tiebreak
  index = sorted(range(len(z)), key=lambda i: (z[i], keys[i]))
  z, positions = z[index], positions[index]
  between = np.diff(z)
  duplicates = np.flatnonzero(between < POSITION_TOLERANCE_MM).tolist()
  if strict and duplicates:
    k = int(np.argmin(between))
    raise DicomError(f"duplicate slice position z={z[k]:.4f} mm (ImagePositionPatient "
                     f"{positions[k].tolist()}) in {names[index[k]]} and {names[index[k + 1]]}")
  gaps = between[between >= POSITION_TOLERANCE_MM]
  gap = float(np.median(gaps)) if gaps.size else float("nan")
  return SliceOrder(index, z, positions, duplicates, gaps, gap)
