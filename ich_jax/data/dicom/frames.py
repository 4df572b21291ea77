"""Enhanced (multi-frame) CT: one file, each frame a slice described by functional groups.

An Enhanced CT Image (SOP class 1.2.840.10008.5.1.4.1.1.2.1, PS3.3 A.38) or a
Legacy Converted Enhanced CT keeps no ImagePositionPatient, PixelSpacing or
RescaleIntercept at the top level: each frame's sit in its item of the
Per-Frame Functional Groups Sequence, or, when every frame shares them, in
the Shared Functional Groups Sequence, each inside its macro's sequence
(PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence,
PixelValueTransformationSequence, FrameVOILUTSequence, CTReconstructionSequence
for the kernel, ...). ``FrameHeader`` is one frame's view: ``get(keyword)``
looks in the frame's own groups, then the shared ones, then the top level,
so every header reader of this codebase (the series reader, series
selection, the modality LUT) reads a frame as it reads a single-frame slice.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ich_jax.data.dicom.files import DicomError

_PER_FRAME = "PerFrameFunctionalGroupsSequence"
_SHARED = "SharedFunctionalGroupsSequence"


class FrameHeader:
  """One frame of a multi-frame image, read like a single-frame header (``get``, ``in``)."""

  def __init__(self, ds: Dataset, index: int, path=None):
    self.dataset = ds
    self.index = index                  # 0-based, in file order
    self.frame_number = index + 1       # 1-based, as DICOM counts frames (PS3.3 C.7.6.16)
    where = path or getattr(ds, "filename", None) or "<dataset>"
    # What error messages name (``hu.rescale_of`` reads ``filename``): the file and the frame.
    self.filename = f"{where} frame {self.frame_number}"
    self._scopes = [*_macro_items(ds, _PER_FRAME, index), *_macro_items(ds, _SHARED, 0), ds]

  def get(self, keyword: str, default=None):
    for scope in self._scopes:
      if keyword in scope:
        return scope[keyword].value
    return default

  def __contains__(self, keyword: str) -> bool:
    return any(keyword in scope for scope in self._scopes)

  def __repr__(self) -> str:
    return f"FrameHeader({self.filename})"


def is_enhanced(ds: Dataset) -> bool:
  """Whether ``ds`` describes its frames by functional groups (an enhanced or legacy-converted image)."""
  return _PER_FRAME in ds or _SHARED in ds


def num_frames(ds: Dataset, where="<dataset>") -> int:
  """NumberOfFrames (1 when absent); DicomError naming ``where`` if it is not a positive integer."""
  value = ds.get("NumberOfFrames", 1)
  try:
    frames = int(value if value not in (None, "") else 1)
  except (TypeError, ValueError) as e:
    raise DicomError(f"{where}: NumberOfFrames is not an integer: {value!r}") from e
  if frames < 1:
    raise DicomError(f"{where}: NumberOfFrames is {frames}")
  return frames


def frame_headers(ds, path=None, *, strict: bool = True) -> list:
  """The slices ``ds`` holds: ``[ds]`` for a single-frame image, one ``FrameHeader`` per frame otherwise.

  A header already split (a FrameHeader), or a mapping that is not a Dataset, is its own one slice.

  Raises:
    DicomError: naming the file: several frames but no functional groups
      (nothing places them in 3-D), NumberOfFrames not a positive integer,
      or a per-frame sequence whose length is not NumberOfFrames. With
      ``strict=False`` (series selection, which ranks whatever parses) such
      a file is ``[ds]``, one slice, and the reader refuses it later.
  """
  if not isinstance(ds, Dataset):
    return [ds]
  if not strict:
    try:
      return frame_headers(ds, path)
    except DicomError:
      return [ds]
  where = path or getattr(ds, "filename", None) or "<dataset>"
  frames = num_frames(ds, where)
  if not is_enhanced(ds):
    if frames != 1:
      raise DicomError(f"{where}: NumberOfFrames is {frames} but there is no {_PER_FRAME} or {_SHARED}, so "
                       "nothing places the frames in 3-D; multi-frame CT is read as an Enhanced CT Image")
    return [ds]
  per_frame = ds.get(_PER_FRAME)
  if per_frame is not None and len(per_frame) != frames:
    raise DicomError(f"{where}: {_PER_FRAME} has {len(per_frame)} items but NumberOfFrames is {frames}")
  return [FrameHeader(ds, i, path) for i in range(frames)]


def _macro_items(ds: Dataset, groups: str, index: int) -> list[Dataset]:
  """The items of every macro sequence in item ``index`` of the functional groups sequence ``groups``."""
  sequence = ds.get(groups)
  if not sequence or index >= len(sequence):
    return []
  return [elem.value[0] for elem in sequence[index] if elem.VR == "SQ" and len(elem.value)]
