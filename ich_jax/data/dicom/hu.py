"""DICOM stored values → Hounsfield units: the modality LUT, and RSNA's 12-bit quirk.

HU is the modality LUT (RescaleSlope/RescaleIntercept) applied to the stored
values, exactly as ``pydicom.pixels.apply_modality_lut`` does, with two
exceptions (``rescale_of``): a slice without the tags is refused (they are
Type 1 for CT; the stored values of an unsigned series read ~1024 HU too high
without them) unless the caller assumes an intercept, and RSNA's 12-bit
intercept quirk (datasets.md) is corrected for every caller: prediction and
every builder read HU through here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from ich_jax.data.dicom.files import DicomError
from ich_jax.data.dicom.geometry import first_value
from ich_jax.data.dicom.pixels import single_frame

# datasets.md (RSNA, "Quirk, 12-bit images"): an unsigned 12-bit slice whose
# RescaleIntercept is above this stores its values offset by -1000 modulo 4096.
QUIRK_12BIT_INTERCEPT_ABOVE = -100.0
QUIRK_12BIT_INTERCEPT = -1000.0
RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")


class RescaleMissing(DicomError):
  """A slice without RescaleSlope/RescaleIntercept, and no intercept assumed (``rescale_of``)."""


@dataclasses.dataclass(frozen=True)
class Rescale:
  """How one slice's stored values become HU: ``stored * slope + intercept``.

  quirk_12bit: RSNA's 12-bit quirk was found, so the stored values are first
    shifted by +1000 modulo 4096 and ``intercept`` is -1000 (not the tag's).
  assumed: the Rescale tags the slice lacked, replaced by slope 1 and the
    caller's ``assume_intercept``.
  """

  slope: float
  intercept: float
  quirk_12bit: bool = False
  assumed: tuple[str, ...] = ()


def has_12bit_quirk(ds: Dataset) -> bool:
  """datasets.md (RSNA, "Quirk, 12-bit images"): BitsStored 12, unsigned, RescaleIntercept > -100."""
  intercept = first_value(ds.get("RescaleIntercept"))  # nan if absent: no quirk
  return (int(ds.get("BitsStored", 0) or 0) == 12 and int(ds.get("PixelRepresentation", 1)) == 0
          and intercept > QUIRK_12BIT_INTERCEPT_ABOVE)


def rescale_of(ds: Dataset, *, assume_intercept: float | None = None) -> Rescale:
  """The modality LUT of one slice, from its header.

  RescaleSlope and RescaleIntercept are Type 1 in the CT Image module: an
  anonymiser that strips them leaves stored values, which for the common
  unsigned storage (intercept -1024) read every voxel ~1024 HU too high.
  So a missing tag is an error naming the file and the tag, unless
  ``assume_intercept`` is given: then a missing slope is 1 and a missing
  intercept is that value, and ``Rescale.assumed`` says which were assumed.

  Raises:
    DicomError: a Rescale tag missing (and nothing assumed), not numeric, or
      a zero slope.
  """
  path = _where(ds)
  values, missing = {}, []
  for keyword in RESCALE_TAGS:
    try:
      raw = ds.get(keyword)
    except ValueError as e:  # pydicom converts DS on access and raises on "n/a"
      raise DicomError(f"{path}: {keyword} is not a number: {e}") from e
    if raw is None or raw == "":
      missing.append(keyword)
      continue
    value = first_value(raw)
    if not np.isfinite(value):
      raise DicomError(f"{path}: {keyword} is not a finite number: {raw!r}")
    values[keyword] = value
  if missing and assume_intercept is None:
    raise RescaleMissing(f"{path}: missing required tag {' and '.join(missing)} (Type 1 in the CT Image module; "
                         "without it the stored values are not HU)")
  slope = values.get("RescaleSlope", 1.0)
  if slope == 0:
    raise DicomError(f"{path}: RescaleSlope is 0")
  if has_12bit_quirk(ds):
    return Rescale(slope, QUIRK_12BIT_INTERCEPT, quirk_12bit=True, assumed=tuple(missing))
  intercept = values.get("RescaleIntercept", assume_intercept)
  return Rescale(slope, float(intercept), assumed=tuple(missing))


def apply_rescale(stored: np.ndarray, rescale: Rescale) -> np.ndarray:
  """Stored values → HU (float32) by ``rescale``; the 12-bit quirk's wrap first (datasets.md, RSNA)."""
  stored = np.asarray(stored)
  if rescale.quirk_12bit:
    # The raw values are HU + 1000 - 1000 modulo 4096: add 1000 back, wrap what passes 4096.
    raw = stored.astype(np.int32) + 1000
    raw[raw >= 4096] -= 4096
    stored = raw
  return (stored.astype(np.float64) * rescale.slope + rescale.intercept).astype(np.float32)


def slice_hu(ds: Dataset, *, assume_intercept: float | None = None) -> tuple[np.ndarray, Rescale]:
  """One slice in HU (float32) and the Rescale that made it (see ``rescale_of``)."""
  # The CT Image IOD has no Modality LUT module: slope and intercept are the whole LUT.
  rescale = rescale_of(ds, assume_intercept=assume_intercept)
  # Decoded by the plugin ``pixels`` names for the syntax, whatever plugin was imported first.
  return apply_rescale(single_frame(ds, _where(ds)), rescale), rescale


def to_hu(ds: Dataset, *, assume_intercept: float | None = None) -> np.ndarray:
  """One slice in HU (float32): the modality LUT applied to the stored values (``slice_hu``)."""
  return slice_hu(ds, assume_intercept=assume_intercept)[0]


def rescale_notes(rescales: Sequence[Rescale], assume_intercept: float | None) -> list[str]:
  """What a series' HU conversion did beyond the tags: the quirk corrected, tags assumed (``Series.notes``)."""
  n = len(rescales)
  notes = []
  quirk = sum(r.quirk_12bit for r in rescales)
  if quirk:
    notes.append(f"12-bit intercept quirk corrected on {quirk} of {n} slices (BitsStored 12, unsigned, "
                 f"RescaleIntercept > {QUIRK_12BIT_INTERCEPT_ABOVE:g}: stored values shifted by +1000 "
                 f"modulo 4096, intercept {QUIRK_12BIT_INTERCEPT:g})")
  assumed = sorted({tag for r in rescales for tag in r.assumed}, key=RESCALE_TAGS.index)
  if assumed:
    count = sum(bool(r.assumed) for r in rescales)
    values = {"RescaleSlope": "slope 1", "RescaleIntercept": f"intercept {assume_intercept:g}"}
    notes.append(f"{' and '.join(assumed)} missing on {count} of {n} slices: "
                 f"{' and '.join(values[t] for t in assumed)} assumed there (assume_intercept)")
  return notes


def _where(ds: Dataset) -> str:
  return str(getattr(ds, "filename", None) or "<dataset>")
