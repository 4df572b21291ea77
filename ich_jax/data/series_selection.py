"""Series selection: which of a study's series is the axial, non-contrast, soft-tissue head CT, and why.

A study holds several series: CQ500 patients have thin (0.625 mm) and thick
(5 mm), plain and post-contrast, bone- and soft-kernel reconstructions
(datasets.md, CQ500), plus localizers and reformats; a scanner hands
prediction the whole folder. Seed 001 (Image Preprocessing) feeds its model
"the axial soft-tissue reconstruction series", identified automatically; here
the identification is a rule over header fields only (no pixels), so the CQ500
builder and prediction make the same choice and can print why.

Hard rules (a series failing one is rejected, with the reason):
  0. CT: the Modality tag, where present, is CT (a folder a scanner or PACS
     hands over may hold MR, structured reports or secondary captures).
  1. Images, not an index: ImageType holds no LOCALIZER/SCOUT/TOPOGRAM and no
     projection (MIP, MinIP, volume rendering), the description names no 3D
     rendering, and the series has at least `min_slices` slices.
  2. Axial: the slice normal (cross product of the ImageOrientationPatient
     directions) within `max_tilt_deg` of the patient's z axis, so a
     gantry-tilted axial series passes and coronal/sagittal reformats do not.
  3. Non-contrast: no ContrastBolusAgent, and no description word for contrast
     ("POST", "CONTRAST", "CECT", "CTA", "150cc", a lone "C") unless the
     description says plain/pre-contrast/non-contrast ("PRE CONTRAST 5MM").
  4. Soft tissue: neither the kernel (ConvolutionKernel) nor the description
     names a sharp kernel (BONE, LUNG, EDGE, DETAIL, SHARP; Siemens-style codes
     such as H60s/Hr64/Br64 with a number >= 50). Where the kernel says nothing,
     a bone display window (WindowWidth >= 1000) counts as a bone series.
Ranking of the accepted (the first wins): ORIGINAL before DERIVED/SECONDARY
ImageType, then SliceThickness closest to `preferred_thickness_mm` (on a log
scale, so 2.5 and 10 mm are equally far from 5 mm), then more slices, then the
lower SeriesNumber, then the SeriesInstanceUID (deterministic).

Thickness is the SliceThickness tag, or the median gap between slice
positions where the tag is absent.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ich_jax.data.dicom import files, frames, geometry

# A Dataset or any mapping with .get(keyword): selection reads headers only.
Header = Any

_INDEX_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
_PROJECTION_IMAGE_TYPES = frozenset({"MIP", "MINIP", "MIN IP", "PROJECTION IMAGE", "VOLUME_RENDER", "VR"})
_DERIVED_IMAGE_TYPES = frozenset({"DERIVED", "SECONDARY", "REFORMATTED", "MPR"})
_RENDER_WORDS = re.compile(r"\b(3D|VRT|VR|MIP|MINIP|SSD|SCOUT|LOCALI[SZ]ER|TOPOGRAM|SURVIEW|DOSE)\b", re.I)
_PLAIN_WORDS = re.compile(r"\b(PLAIN|NON[- ]?CON(TRAST)?|NONCON|NCCT|NECT|PRE[- ]?CON(TRAST)?|PRE|W/?O|WITHOUT)\b", re.I)
# "C" alone: CQ500 descriptions such as "CT C THIN" next to "CT Thin Plain" of the same patient.
_CONTRAST_WORDS = re.compile(
    r"C\+|\+C|\b(POST|CONTRAST|CECT|CTA|ANGIO|ENHANCED|ARTERIAL|VENOUS|DELAYED|IV|C)\b|\b\d+\s*CC\b", re.I)
_SHARP_WORDS = re.compile(r"\b(BONE|BONEPLUS|LUNG|EDGE|DETAIL|SHARP|ULTRA|HIGH ?RES|HR|HRCT)\b", re.I)
_SHARP_WORDS_IN_DESCRIPTION = re.compile(r"\b(BONE|BONES|LUNG|EDGE|SHARP|HRCT|HIGH ?RES|HIRES|WINDOW BONE)\b", re.I)
# Siemens-style kernel codes: a letter (or two) and a number, e.g. H31s, J40s, Hr38, Br64, Qr59.
_NUMBERED_KERNEL = re.compile(r"^\s*[A-Z][a-z]?(\d{2})[a-z]?\s*$")
_NONE_VALUES = frozenset({"", "NONE", "NO", "N/A", "NA", "0"})


@dataclasses.dataclass(frozen=True)
class SelectionPolicy:
  """What a good series is; a builder config or a prediction config carries one."""
  # Seed 003 trains on RSNA's ~5 mm reconstructions; thin series are a config away.
  preferred_thickness_mm: float = 5.0
  max_tilt_deg: float = 30.0        # gantry tilt rarely exceeds ~25 degrees; reformats are 90 away
  min_slices: int = 5               # localizers have 1-3 images
  bone_window_width: float = 1000.0  # a display window this wide is a bone window


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
  """What selection knows about one series (from its headers)."""
  series_uid: str
  description: str
  num_slices: int
  image_type: tuple[str, ...]
  kernel: str
  contrast_agent: str
  orientation: tuple[float, ...] | None     # ImageOrientationPatient, the most common in the series
  thickness_mm: float                        # SliceThickness, else median position gap; nan if neither
  series_number: int | None
  window_width: float                        # first WindowWidth value; nan if absent
  study_uid: str = ""
  modality: str = ""                         # the Modality tag; "" if absent


@dataclasses.dataclass(frozen=True)
class Candidate:
  info: SeriesInfo
  accepted: bool
  reasons: tuple[str, ...]   # why rejected (accepted: the properties that made it pass)


@dataclasses.dataclass(frozen=True)
class Selection:
  series_uid: str | None     # None: no series passed the rules
  reason: str                # one paragraph: the choice and why, every rejection and why
  candidates: tuple[Candidate, ...]   # accepted first, in rank order, then the rejected

  def to_dict(self) -> dict:
    return {
        "series_uid": self.series_uid,
        "reason": self.reason,
        "candidates": [{"series_uid": c.info.series_uid, "description": c.info.description,
                        "num_slices": c.info.num_slices,
                        "thickness_mm": None if math.isnan(c.info.thickness_mm) else c.info.thickness_mm,
                        "kernel": c.info.kernel, "accepted": c.accepted, "reasons": list(c.reasons)}
                       for c in self.candidates],
    }


# --- Headers -> SeriesInfo ---------------------------------------------------


def _text(header: Header, keyword: str) -> str:
  value = header.get(keyword)
  if value is None:
    return ""
  if geometry.is_multi(value):
    return "\\".join(str(v) for v in value)
  return str(value).strip()


def summarize(series_uid: str, headers: Sequence[Header]) -> SeriesInfo:
  """One series' SeriesInfo from the headers of its slices (any order, at least one)."""
  if not headers:
    raise ValueError(f"series {series_uid}: no headers")
  # An Enhanced CT file's frames are its slices, their tags in functional groups (dicom.frames).
  headers = [h for header in headers for h in frames.frame_headers(header, strict=False)]
  first = headers[0]
  orientations = [o for h in headers if (o := geometry.tag_floats(h, "ImageOrientationPatient", 6, strict=False))
                  is not None]
  counts = geometry.orientation_counts(orientations)
  # most_common: a tie goes to the orientation met first in header order (the builders' order_slices
  # takes the largest key instead; a selection reason names this one, so it is kept).
  orientation = counts.most_common(1)[0][0] if counts else None
  thickness = geometry.first_value(first.get("SliceThickness"))
  if not math.isfinite(thickness) or thickness <= 0:
    thickness = _median_gap(headers, orientation)
  number = first.get("SeriesNumber")
  try:
    number = int(number) if number not in (None, "") else None
  except (TypeError, ValueError):
    number = None
  image_type = first.get("ImageType") or ()
  image_type = tuple(str(v).strip().upper() for v in (image_type if geometry.is_multi(image_type) else [image_type]))
  return SeriesInfo(
      series_uid=series_uid, description=_text(first, "SeriesDescription"), num_slices=len(headers),
      image_type=image_type, kernel=_text(first, "ConvolutionKernel"),
      contrast_agent=_text(first, "ContrastBolusAgent"), orientation=orientation, thickness_mm=thickness,
      series_number=number, window_width=geometry.first_value(first.get("WindowWidth")),
      study_uid=_text(first, "StudyInstanceUID"), modality=_text(first, "Modality").upper())


def _median_gap(headers, orientation) -> float:
  if orientation is None or len(headers) < 2:
    return float("nan")
  normal = geometry.slice_normal(orientation)
  if normal is None:
    return float("nan")
  positions = [p for h in headers
               if (p := geometry.tag_floats(h, "ImagePositionPatient", 3, strict=False)) is not None]
  return geometry.order_along_normal(positions, normal).gap


def group_headers(headers: Iterable[Header]) -> dict[str, list[Header]]:
  """SeriesInstanceUID -> its headers (headers without the tag are left out)."""
  groups: dict[str, list[Header]] = {}
  for h in headers:
    uid = _text(h, "SeriesInstanceUID")
    if uid:
      groups.setdefault(uid, []).append(h)
  return groups


# --- The rules -----------------------------------------------------------------


def kernel_is_sharp(kernel: str) -> bool | None:
  """True: a bone/lung kernel; False: a soft one; None: the name says neither."""
  if not kernel:
    return None
  if _SHARP_WORDS.search(kernel):
    return True
  m = _NUMBERED_KERNEL.match(kernel)
  if m:
    return int(m.group(1)) >= 50
  if re.search(r"\b(SOFT|STANDARD|STD|BRAIN|HEAD|SMOOTH|UB|FC2\d)\b", kernel, re.I):
    return False
  return None


def contrast_reason(info: SeriesInfo) -> str | None:
  """Why the series is post-contrast, or None."""
  if info.contrast_agent.strip().upper() not in _NONE_VALUES:
    return f"ContrastBolusAgent {info.contrast_agent!r}"
  desc = info.description
  if _PLAIN_WORDS.search(desc):
    return None
  m = _CONTRAST_WORDS.search(desc)
  if m:
    return f"description {desc!r} names contrast ({m.group(0).strip()!r})"
  return None


def _check(info: SeriesInfo, policy: SelectionPolicy) -> tuple[bool, tuple[str, ...]]:
  rejections, passes = [], []
  if info.modality and info.modality != "CT":
    rejections.append(f"Modality {info.modality} is not CT")
  index = _INDEX_IMAGE_TYPES.intersection(info.image_type)
  projection = _PROJECTION_IMAGE_TYPES.intersection(info.image_type)
  render = _RENDER_WORDS.search(info.description)
  if index:
    rejections.append(f"ImageType {'/'.join(info.image_type)} is a {sorted(index)[0].lower()}")
  elif projection:
    rejections.append(f"ImageType {'/'.join(info.image_type)} is a projection ({sorted(projection)[0]})")
  elif render:
    rejections.append(f"description {info.description!r} names a rendering or index ({render.group(0)!r})")
  if info.num_slices < policy.min_slices:
    rejections.append(f"{info.num_slices} slices < min_slices {policy.min_slices}")

  if info.orientation is None:
    rejections.append("ImageOrientationPatient missing or not 6 numbers")
  else:
    normal = geometry.slice_normal(info.orientation)
    if normal is None:
      rejections.append(f"ImageOrientationPatient {list(info.orientation)} is degenerate")
    else:
      tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
      if tilt > policy.max_tilt_deg:
        plane = "sagittal" if abs(normal[0]) >= abs(normal[1]) else "coronal"
        rejections.append(f"not axial: slice normal {tilt:.0f} deg from the z axis ({plane}-like)")
      else:
        passes.append("axial" if tilt < 0.5 else f"axial (tilt {tilt:.1f} deg)")

  why_contrast = contrast_reason(info)
  if why_contrast:
    rejections.append(f"contrast: {why_contrast}")
  else:
    passes.append("non-contrast")

  sharp = kernel_is_sharp(info.kernel)
  desc_sharp = _SHARP_WORDS_IN_DESCRIPTION.search(info.description)
  if sharp:
    rejections.append(f"sharp kernel {info.kernel!r}")
  elif desc_sharp:
    rejections.append(f"description {info.description!r} names a sharp reconstruction ({desc_sharp.group(0)!r})")
  elif sharp is None and info.window_width >= policy.bone_window_width:
    rejections.append(f"kernel {info.kernel!r} unknown and WindowWidth {info.window_width:g} is a bone window")
  else:
    passes.append(f"soft tissue (kernel {info.kernel!r})" if info.kernel else "soft tissue (no kernel tag)")
  if rejections:
    return False, tuple(rejections)
  return True, tuple(passes)


def _derived(info: SeriesInfo) -> bool:
  return bool(_DERIVED_IMAGE_TYPES.intersection(info.image_type))


def _rank_key(info: SeriesInfo, policy: SelectionPolicy):
  t = info.thickness_mm
  distance = abs(math.log(t / policy.preferred_thickness_mm)) if math.isfinite(t) and t > 0 else math.inf
  number = info.series_number if info.series_number is not None else 1 << 30
  return (_derived(info), round(distance, 6), -info.num_slices, number, info.series_uid)


def _name(info: SeriesInfo) -> str:
  t = f"{info.thickness_mm:g} mm" if math.isfinite(info.thickness_mm) else "thickness unknown"
  return f"{info.description or '(no description)'!r} [{info.series_uid}, {info.num_slices} slices, {t}]"


def select_series(series: Iterable[SeriesInfo] | Mapping[str, Sequence[Header]],
                  policy: SelectionPolicy = SelectionPolicy()) -> Selection:
  """Picks the axial non-contrast soft-tissue series (module docstring) and says why.

  Args:
    series: SeriesInfo per series, or SeriesInstanceUID -> the headers of its slices.
    policy: the preferences.
  """
  if isinstance(series, Mapping):
    infos = [summarize(uid, headers) for uid, headers in series.items()]
  else:
    infos = list(series)
  checked = [(info, *_check(info, policy)) for info in infos]
  accepted = sorted((c for c in checked if c[1]), key=lambda c: _rank_key(c[0], policy))
  rejected = sorted((c for c in checked if not c[1]), key=lambda c: c[0].series_uid)
  candidates = tuple(Candidate(info, ok, reasons) for info, ok, reasons in accepted + rejected)
  rejected_text = "; ".join(f"{_name(i)}: {', '.join(r)}" for i, _, r in rejected)
  if not accepted:
    reason = (f"no series passes (axial, non-contrast, soft tissue, >= {policy.min_slices} slices) "
              f"among {len(infos)}: {rejected_text or 'no series'}")
    return Selection(None, reason, candidates)
  best, _, passes = accepted[0]
  reason = f"chose {_name(best)}: {', '.join(passes)}"
  if _derived(best):
    reason += f", ImageType {'/'.join(best.image_type)} (no ORIGINAL series passed)"
  if len(accepted) > 1:
    others = ", ".join(_name(i) for i, _, _ in accepted[1:])
    reason += (f"; thickness closest to the preferred {policy.preferred_thickness_mm:g} mm"
               f" (then ORIGINAL, more slices, lower SeriesNumber) over {others}")
  if rejected:
    reason += f". Rejected: {rejected_text}"
  return Selection(best.series_uid, reason, candidates)


# --- At the edge: a folder ----------------------------------------------------------


def headers_in_folder(directory: str | os.PathLike):
  """Headers of every DICOM file under `directory` (recursively), grouped by series.

  Returns:
    (SeriesInstanceUID -> [(path, header)], unreadable: [(path, reason)]). An
    unreadable file is listed, not fatal: one bad file must not hide a study.
  """
  by_series: dict[str, list] = {}
  unreadable = []
  for path in files.dicom_candidates(directory):
    try:
      ds = files.read_header(path)
    except files.DicomError as e:
      msg = str(e)
      unreadable.append((path, msg[len(f"{path}: "):] if msg.startswith(f"{path}: ") else msg))
      continue
    uid = _text(ds, "SeriesInstanceUID")
    if not uid:
      unreadable.append((path, "missing required tag SeriesInstanceUID"))
      continue
    by_series.setdefault(uid, []).append((path, ds))
  return by_series, unreadable


def select_in_folder(directory: str | os.PathLike, policy: SelectionPolicy = SelectionPolicy()):
  """Reads the headers under `directory` (recursively) and selects a series.

  Returns:
    (selection, files of the chosen series (empty if none), unreadable: [(path, reason)]).
  """
  by_series, unreadable = headers_in_folder(directory)
  selection = select_series({uid: [ds for _, ds in items] for uid, items in by_series.items()}, policy)
  files = [path for path, _ in by_series.get(selection.series_uid, [])]
  return selection, files, unreadable
