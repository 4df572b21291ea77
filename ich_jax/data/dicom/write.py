"""Writing a CT volume as a valid DICOM series: the phantoms' way into the real ingestion path.

synthetic_ich and the builders' fixtures write their studies here and read
them back with ``load_series``, so tests exercise what real scans go through:
random file names, nested folders, signed or 12-bit storage, the transfer
syntaxes a PACS exports (JPEG Lossless through python-gdcm, which pydicom
cannot encode), big endian, RSNA-style SOPInstanceUIDs, and one Enhanced CT
file with functional groups (``Enhanced``) instead of a file per slice.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
import pydicom.datadict
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import format_number_as_ds

from ich_jax.data.dicom.files import PathLike
from ich_jax.data.dicom.geometry import slice_normal
from ich_jax.data.windows import BRAIN_WINDOW

# Enhanced CT (PS3.3 A.38): the functional group macros write_series fills, and the single-frame tags each
# carries. PlanePositionSequence (ImagePositionPatient) and FrameContentSequence are always per frame.
ENHANCED_MACROS = {
  "PlaneOrientationSequence": ("ImageOrientationPatient",),
  "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
  "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
  "FrameVOILUTSequence": ("WindowCenter", "WindowWidth"),
  "CTReconstructionSequence": ("ConvolutionKernel",),
}


@dataclasses.dataclass(frozen=True)
class Enhanced:
  """Write a series as one Enhanced CT Image file (multi-frame) instead of one file per slice.

  per_frame: macros of ``ENHANCED_MACROS`` repeated in every frame's
    functional groups instead of shared (a reader must accept either).
  frame_order: frame f holds slice ``frame_order[f]`` (None: slice order), so
    frame order need not be z order.
  file_name: the file's path under ``out_dir``.
  """

  per_frame: tuple[str, ...] = ()
  frame_order: tuple[int, ...] | None = None
  file_name: str = "enhanced.dcm"


def write_series(
    volume_hu: np.ndarray, spacing: tuple[float, float, float], out_dir: PathLike, *,
    z_positions: Sequence[float] | np.ndarray | None = None, slice_thickness: float | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), origin: Sequence[float] = (0.0, 0.0, 0.0),
    patient_id: str = "PHANTOM", study_uid: str | None = None, series_uid: str | None = None,
    sop_uids: Sequence[str] | None = None, series_number: int = 1, series_description: str = "HEAD NONCON",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"), kernel: str = "STANDARD",
    rescale_slope: float = 1.0, rescale_intercept: float = -1024.0, bits_stored: int = 16,
    pixel_representation: int | None = None, clip: bool = False,
    file_names: str | Callable[[int, str], str] = "index",
    transfer_syntax: str = pydicom.uid.ExplicitVRLittleEndian,
    extra_tags: Mapping[str, Any] | None = None, rng: np.random.Generator | int | None = None,
    enhanced: Enhanced | None = None,
) -> list[pathlib.Path]:
  """Writes ``volume_hu`` [S, H, W] as one CT series, one file per slice (or one Enhanced CT file).

  Slice i lies at ``z_positions[i]`` along the normal ``cross(row, col)``
  (default ``origin·normal + i * spacing[0]``), i.e. ImagePositionPatient is
  ``origin`` moved along the normal so that its projection is that z; with
  the default z the first slice sits exactly at ``origin``.

  Stored value = ``round((hu - intercept) / slope)``. PixelRepresentation is
  1 (signed) when a stored value is negative, unless given. A value outside
  the ``bits_stored`` range raises ValueError naming it, or is clipped to the
  range with ``clip=True`` (what scanners do at -1024 / 3071 HU).

  Args (beyond the obvious):
    study_uid, series_uid: None → fresh UIDs.
    sop_uids: SOPInstanceUID per slice (e.g. RSNA-style ``ID_<hex>``); None →
      UIDs derived from ``series_uid`` and the slice index. ``enhanced``: one
      value, the file's (None: derived from ``series_uid``).
    file_names: "index" (``0000.dcm``…), "random" (hex names from ``rng``, so
      the order on disk says nothing), or ``f(i, sop_uid) -> relative path``
      (may contain sub-folders).
    transfer_syntax: any uncompressed syntax (Explicit/Implicit VR Little
      Endian, Explicit VR Big Endian, Deflated), one pydicom can encode here
      (RLELossless; JPEGLSLossless with pyjpegls; JPEG2000Lossless with
      pylibjpeg-openjpeg), or one python-gdcm can (JPEGLossless,
      JPEGLosslessSV1; the others when pydicom's encoder is missing).
    extra_tags: keyword → value set on every slice (e.g. ContrastBolusAgent).
    enhanced: write one Enhanced CT Image file (``Enhanced``): the per-slice
      tags go into its functional groups, ``file_names`` is not used.

  Returns:
    The written paths, in slice order (``enhanced``: the one file).
  """
  volume_hu = np.asarray(volume_hu)
  if volume_hu.ndim != 3:
    raise ValueError(f"volume_hu must be [S, H, W], got shape {volume_hu.shape}")
  num_slices, rows, cols = volume_hu.shape
  gap, row_spacing, col_spacing = (float(s) for s in spacing)
  if rescale_slope == 0:
    raise ValueError("rescale_slope must be non-zero, got 0")
  storage = _storage(volume_hu, rescale_slope, rescale_intercept, bits_stored, pixel_representation, clip)
  orientation = np.asarray(orientation, np.float64)
  z, positions = _positions(orientation, origin, z_positions, gap, num_slices)
  rng = np.random.default_rng(rng)
  study_uid = study_uid or pydicom.uid.generate_uid()
  series_uid = series_uid or pydicom.uid.generate_uid()
  if enhanced is not None and sop_uids is None:
    sop_uids = [pydicom.uid.generate_uid(entropy_srcs=[series_uid, "enhanced"])]
  sop_uids = _sop_uids(sop_uids, series_uid, 1 if enhanced else num_slices)
  base = _series_dataset(
      rows=rows, cols=cols, orientation=orientation, pixel_spacing=(row_spacing, col_spacing),
      slice_thickness=gap if slice_thickness is None else float(slice_thickness),
      patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
      series_number=series_number, series_description=series_description,
      image_type=image_type, kernel=kernel, slope=rescale_slope, intercept=rescale_intercept,
      bits_stored=bits_stored, pixel_representation=storage[0], extra_tags=extra_tags or {})
  transfer_syntax = _writable_syntax(transfer_syntax)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if enhanced is not None:
    ds = _enhanced_dataset(base, sop_uids[0], positions, enhanced)
    stored = np.stack([_stored(volume_hu[i], rescale_slope, rescale_intercept, storage)
                       for i in _frame_order(enhanced, num_slices)])
    return [_save(ds, stored, transfer_syntax, out_dir / enhanced.file_name, "the enhanced file")]
  paths = []
  for i, name in enumerate(_file_names(file_names, sop_uids, rng)):
    ds = _slice_dataset(base, sop_uids[i], i, positions[i], z[i])
    stored = _stored(volume_hu[i], rescale_slope, rescale_intercept, storage)
    paths.append(_save(ds, stored, transfer_syntax, out_dir / name, f"slice {i}"))
  return paths


def _storage(hu, slope, intercept, bits_stored, pixel_representation, clip):
  """Checks that ``hu`` can be stored; returns (PixelRepresentation, dtype, min, max stored).

  Works on the volume's extremes only: a 4000-slice volume in float64 would
  not fit in memory, so conversion itself is per slice (``_to_stored``).
  """
  if not 1 <= bits_stored <= 16:
    raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
  if hu.dtype.kind not in "iuf" or hu.size == 0:
    raise ValueError(f"volume_hu must be a non-empty real array, got {hu.dtype} {hu.shape}")
  if hu.dtype.kind == "f":
    finite = np.isfinite(hu)
    if not finite.all():
      idx = tuple(int(i) for i in np.argwhere(~finite)[0])
      raise ValueError(f"HU value {hu[idx]} at index {idx} cannot be stored")
  argmin, argmax = np.argmin(hu), np.argmax(hu)
  extremes = _to_stored(hu.flat[[argmin, argmax]], slope, intercept)
  lo, hi = extremes.min(), extremes.max()
  if pixel_representation is None:
    pixel_representation = int(lo < 0)
  if pixel_representation not in (0, 1):
    raise ValueError(f"pixel_representation must be 0 or 1, got {pixel_representation}")
  if pixel_representation:
    s_min, s_max, dtype = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1, np.int16
  else:
    s_min, s_max, dtype = 0, 2**bits_stored - 1, np.uint16
  if not clip and (lo < s_min or hi > s_max):
    flat = argmin if not s_min <= extremes[0] <= s_max else argmax
    idx = tuple(int(i) for i in np.unravel_index(flat, hu.shape))
    hu_range = sorted((s_min * slope + intercept, s_max * slope + intercept))
    raise ValueError(
        f"HU value {hu[idx]} at index {idx} cannot be stored: with RescaleSlope {slope}, "
        f"RescaleIntercept {intercept}, BitsStored {bits_stored}, PixelRepresentation "
        f"{pixel_representation} the representable HU range is {hu_range} (pass clip=True to clip)")
  return pixel_representation, dtype, s_min, s_max


def _to_stored(hu, slope, intercept):
  return np.rint((hu.astype(np.float64) - intercept) / slope)


def _stored(hu_slice, slope, intercept, storage) -> np.ndarray:
  """One slice's stored values, clipped to the storage range (``_storage``) and cast."""
  _, dtype, s_min, s_max = storage
  return np.clip(_to_stored(hu_slice, slope, intercept), s_min, s_max).astype(dtype)


def _positions(orientation, origin, z_positions, gap, num_slices) -> tuple[np.ndarray, np.ndarray]:
  """(z per slice along the normal, ImagePositionPatient per slice): ``origin`` moved along the normal to each z."""
  normal = slice_normal(orientation, strict=True, where="orientation argument")
  origin = np.asarray(origin, np.float64)
  if origin.shape != (3,):
    raise ValueError(f"origin must have 3 values, got {origin.tolist()}")
  if z_positions is None:
    z = origin @ normal + gap * np.arange(num_slices)
  else:
    z = np.asarray(z_positions, np.float64)
    if z.shape != (num_slices,):
      raise ValueError(f"z_positions must have {num_slices} values, got shape {z.shape}")
  positions = (origin - (origin @ normal) * normal)[None, :] + z[:, None] * normal[None, :]
  return z, positions


def _sop_uids(sop_uids, series_uid: str, num_slices: int) -> Sequence[str]:
  if sop_uids is None:  # derived from the series UID: a seeded fixture is byte-stable
    return [pydicom.uid.generate_uid(entropy_srcs=[series_uid, "sop", str(i)]) for i in range(num_slices)]
  if len(sop_uids) != num_slices or len(set(sop_uids)) != num_slices:
    raise ValueError(f"sop_uids must be {num_slices} distinct values, got {len(sop_uids)} "
                     f"({len(set(sop_uids))} distinct)")
  return sop_uids


def _file_names(file_names, sop_uids, rng) -> list[str]:
  n = len(sop_uids)
  if callable(file_names):
    names = [str(file_names(i, uid)) for i, uid in enumerate(sop_uids)]
  elif file_names == "index":
    width = max(4, len(str(n - 1)))
    names = [f"{i:0{width}d}.dcm" for i in range(n)]
  elif file_names == "random":
    names = [f"{int(v):012x}.dcm" for v in rng.choice(2**48, size=n, replace=False)]
  else:
    raise ValueError(f"file_names must be 'index', 'random' or a callable, got {file_names!r}")
  if len(set(names)) != n:
    raise ValueError(f"file_names produced {n - len(set(names))} duplicate names")
  return names


def _writable_syntax(transfer_syntax: str) -> pydicom.uid.UID:
  transfer_syntax = pydicom.uid.UID(transfer_syntax)
  if not transfer_syntax.is_transfer_syntax:
    raise ValueError(f"transfer_syntax {transfer_syntax!r} is not a DICOM transfer syntax")
  if transfer_syntax.is_compressed and _encoder(transfer_syntax) is None:
    raise ValueError(f"transfer_syntax {transfer_syntax.name} cannot be written here: neither pydicom's "
                     "encoder plugins nor python-gdcm encode it")
  return transfer_syntax


def _encoder(transfer_syntax: pydicom.uid.UID) -> str | None:
  """Who compresses ``transfer_syntax``: "pydicom" (its encoder plugins), "gdcm", or None."""
  try:
    if get_encoder(transfer_syntax).is_available:
      return "pydicom"
  except NotImplementedError:  # no pydicom encoder for the syntax at all (JPEG Lossless)
    pass
  try:
    import gdcm
  except ImportError:
    return None
  return "gdcm" if gdcm.TransferSyntax.GetTSType(str(transfer_syntax)) != gdcm.TransferSyntax.TS_END else None


def _slice_dataset(base: Dataset, sop_uid: str, i: int, position: np.ndarray, z: float) -> Dataset:
  """One slice's data set: the series' shared tags plus its own identity and place."""
  ds = _copy(base)
  ds.SOPInstanceUID = sop_uid
  ds.InstanceNumber = i + 1
  ds.ImagePositionPatient = [_ds(v) for v in position]
  ds.SliceLocation = _ds(z)
  ds.file_meta = _file_meta(sop_uid)
  return ds


def _save(ds: Dataset, stored: np.ndarray, transfer_syntax: pydicom.uid.UID, path: pathlib.Path,
          what: str) -> pathlib.Path:
  """Sets ``stored`` ([H, W] or [frames, H, W]) as PixelData in ``transfer_syntax`` and writes ``path``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    if not transfer_syntax.is_compressed:
      ds.file_meta.TransferSyntaxUID = transfer_syntax
      # pydicom writes a big endian data set but leaves PixelData's bytes as given.
      order = "<" if transfer_syntax.is_little_endian else ">"
      ds.PixelData = stored.astype(stored.dtype.newbyteorder(order)).tobytes()
    elif _encoder(transfer_syntax) == "pydicom":
      ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
      ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    else:
      _gdcm_compress(ds, stored, transfer_syntax, path)
  except Exception as e:  # encoder plugins raise RuntimeError with their own story
    raise ValueError(f"cannot encode {what} ({'x'.join(map(str, stored.shape))}, {stored.dtype.type.__name__}) "
                     f"as {transfer_syntax.name}: {e}") from e
  ds.save_as(path, enforce_file_format=True)
  return path


def _gdcm_compress(ds: Dataset, stored: np.ndarray, transfer_syntax: pydicom.uid.UID, path: pathlib.Path) -> None:
  """Sets ``stored`` as PixelData of ``ds`` compressed in ``transfer_syntax`` by python-gdcm (it encodes JPEG
  Lossless, which pydicom cannot). Only the encoded pixels are taken from gdcm's file: its writer also
  rewrites an enhanced file's functional groups from its own idea of the geometry."""
  import gdcm

  raw, encoded = path.with_name(path.name + ".raw"), path.with_name(path.name + ".gdcm")
  ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  ds.PixelData = stored.tobytes()
  try:
    ds.save_as(raw, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(raw))
    if not reader.Read():
      raise RuntimeError("gdcm cannot read the uncompressed data set")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    change.SetInput(reader.GetImage())
    if not change.Change():
      raise RuntimeError("gdcm ImageChangeTransferSyntax failed")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(encoded))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
      raise RuntimeError("gdcm cannot write the encoded data set")
    out = pydicom.dcmread(encoded)
  finally:
    raw.unlink(missing_ok=True)
    encoded.unlink(missing_ok=True)
  for keyword in ("BitsStored", "PixelRepresentation", "Rows", "Columns"):
    if out.get(keyword) != ds.get(keyword):  # the stream encodes the file's description, or decodes wrong
      raise RuntimeError(f"gdcm changed {keyword} from {ds.get(keyword)} to {out.get(keyword)}")
  ds.file_meta.TransferSyntaxUID = transfer_syntax
  ds.PixelData = out.PixelData
  ds["PixelData"].VR = "OB"


def _series_dataset(*, rows, cols, orientation, pixel_spacing, slice_thickness, patient_id,
                    study_uid, series_uid, series_number, series_description, image_type,
                    kernel, slope, intercept, bits_stored, pixel_representation,
                    extra_tags) -> Dataset:
  """The tags shared by every slice of a series."""
  date = "20000101"  # fixed, so fixtures do not depend on the day they were written
  ds = Dataset()
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.ImageType = list(image_type)
  ds.SOPClassUID = pydicom.uid.CTImageStorage
  ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
  ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
  ds.AccessionNumber = ""
  ds.Modality = "CT"
  ds.Manufacturer = "ich-jax"
  ds.ReferringPhysicianName = ""
  ds.StudyDescription = "CT HEAD"
  ds.SeriesDescription = series_description
  ds.PatientName = patient_id
  ds.PatientID = patient_id
  ds.PatientBirthDate = ""
  ds.PatientSex = ""
  ds.BodyPartExamined = "HEAD"
  ds.SliceThickness = _ds(slice_thickness)
  ds.KVP = "120"
  ds.ConvolutionKernel = kernel
  ds.PatientPosition = "HFS"
  ds.StudyInstanceUID = study_uid
  ds.SeriesInstanceUID = series_uid
  ds.StudyID = "1"
  ds.SeriesNumber = series_number
  ds.AcquisitionNumber = 1
  ds.ImageOrientationPatient = [_ds(v) for v in orientation]
  ds.FrameOfReferenceUID = pydicom.uid.generate_uid(entropy_srcs=[series_uid, "frame"])
  ds.PositionReferenceIndicator = ""
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.Rows = rows
  ds.Columns = cols
  ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = pixel_representation
  ds.WindowCenter = _ds(BRAIN_WINDOW[0])
  ds.WindowWidth = _ds(BRAIN_WINDOW[1])
  ds.RescaleIntercept = _ds(intercept)
  ds.RescaleSlope = _ds(slope)
  ds.RescaleType = "HU"
  for keyword, value in extra_tags.items():
    setattr(ds, keyword, value)
  return ds


def _ds(value: float) -> str:
  return format_number_as_ds(float(value))


def _copy(base: Dataset) -> Dataset:
  ds = Dataset()
  for elem in base:  # shared, never mutated: tags set on the copy are new elements
    ds.add(elem)
  return ds


def _frame_order(enhanced: Enhanced, num_slices: int) -> list[int]:
  order = list(range(num_slices)) if enhanced.frame_order is None else [int(i) for i in enhanced.frame_order]
  if sorted(order) != list(range(num_slices)):
    raise ValueError(f"Enhanced.frame_order must be a permutation of 0..{num_slices - 1}, got {order}")
  return order


def _enhanced_dataset(base: Dataset, sop_uid: str, positions: np.ndarray, enhanced: Enhanced) -> Dataset:
  """An Enhanced CT Image (PS3.3 A.38) of the series: ``base``'s per-slice tags moved into functional groups."""
  unknown = sorted(set(enhanced.per_frame) - set(ENHANCED_MACROS))
  if unknown:
    raise ValueError(f"Enhanced.per_frame names {unknown}; known macros: {sorted(ENHANCED_MACROS)}")
  ds = _copy(base)
  macros = {}
  for macro, keywords in ENHANCED_MACROS.items():
    item = Dataset()
    for keyword in keywords:
      setattr(item, keyword, base[keyword].value)
      del ds[keyword]
    macros[macro] = item
  image_type = list(base.ImageType)[:4]
  ds.ImageType = image_type + ["NONE"] * (4 - len(image_type))  # Type 1, four values in Enhanced CT
  ds.SOPClassUID = pydicom.uid.EnhancedCTImageStorage
  ds.SOPInstanceUID = sop_uid
  ds.InstanceNumber = 1
  ds.ContentQualification = "PRODUCT"
  ds.BurnedInAnnotation = "NO"
  ds.LossyImageCompression = "00"
  ds.PresentationLUTShape = "IDENTITY"
  ds.AcquisitionDateTime = base.AcquisitionDate + base.AcquisitionTime
  ds.NumberOfFrames = len(positions)
  macros["CTImageFrameTypeSequence"] = Dataset()
  macros["CTImageFrameTypeSequence"].FrameType = ds.ImageType
  shared = Dataset()
  for macro, item in macros.items():
    if macro not in enhanced.per_frame:
      setattr(shared, macro, DicomSequence([item]))
  ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
  # One dimension, the position in the stack: viewers and DICOM SEG writers order frames by it.
  dimension_uid = pydicom.uid.generate_uid(entropy_srcs=[sop_uid, "dimensions"])
  organization = Dataset()
  organization.DimensionOrganizationUID = dimension_uid
  ds.DimensionOrganizationSequence = DicomSequence([organization])
  index = Dataset()
  index.DimensionOrganizationUID = dimension_uid
  index.DimensionIndexPointer = pydicom.datadict.tag_for_keyword("InStackPositionNumber")
  index.FunctionalGroupPointer = pydicom.datadict.tag_for_keyword("FrameContentSequence")
  ds.DimensionIndexSequence = DicomSequence([index])
  frames = []
  for i in _frame_order(enhanced, len(positions)):
    frame = Dataset()
    for macro in enhanced.per_frame:
      setattr(frame, macro, DicomSequence([macros[macro]]))
    position = Dataset()
    position.ImagePositionPatient = [_ds(v) for v in positions[i]]
    frame.PlanePositionSequence = DicomSequence([position])
    content = Dataset()
    content.StackID = "1"
    content.InStackPositionNumber = i + 1
    content.DimensionIndexValues = [i + 1]
    frame.FrameContentSequence = DicomSequence([content])
    frames.append(frame)
  ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
  ds.file_meta = _file_meta(sop_uid, pydicom.uid.EnhancedCTImageStorage)
  return ds


def _file_meta(sop_uid: str, sop_class: str = pydicom.uid.CTImageStorage) -> FileMetaDataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
  return meta
