"""Writing a CT volume as a valid DICOM series: the phantoms' way into the real ingestion path.

synthetic_ich and the builders' fixtures write their studies here and read
them back with ``load_series``, so tests exercise what real scans go through:
random file names, nested folders, signed or 12-bit storage, compressed
transfer syntaxes, RSNA-style SOPInstanceUIDs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import format_number_as_ds

from ich_jax.data.dicom.files import PathLike
from ich_jax.data.dicom.geometry import slice_normal
from ich_jax.data.windows import BRAIN_WINDOW


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
) -> list[pathlib.Path]:
  """Writes ``volume_hu`` [S, H, W] as one CT series, one file per slice.

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
      UIDs derived from ``series_uid`` and the slice index.
    file_names: "index" (``0000.dcm``…), "random" (hex names from ``rng``, so
      the order on disk says nothing), or ``f(i, sop_uid) -> relative path``
      (may contain sub-folders).
    transfer_syntax: ExplicitVRLittleEndian, ImplicitVRLittleEndian, or any
      syntax pydicom can encode here (RLELossless; JPEG2000Lossless with
      pylibjpeg-openjpeg).
    extra_tags: keyword → value set on every slice (e.g. ContrastBolusAgent).

  Returns:
    The written paths, in slice order.
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
  sop_uids = _sop_uids(sop_uids, series_uid, num_slices)
  names = _file_names(file_names, sop_uids, rng)
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
  paths = []
  for i in range(num_slices):
    ds = _slice_dataset(base, sop_uids[i], i, positions[i], z[i])
    _set_pixels(ds, _stored(volume_hu[i], rescale_slope, rescale_intercept, storage), transfer_syntax, i)
    path = out_dir / names[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    paths.append(path)
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
  if not transfer_syntax.is_compressed and not transfer_syntax.is_little_endian:
    raise ValueError(f"transfer_syntax {transfer_syntax.name} is not supported for writing")
  return transfer_syntax


def _slice_dataset(base: Dataset, sop_uid: str, i: int, position: np.ndarray, z: float) -> Dataset:
  """One slice's data set: the series' shared tags plus its own identity and place."""
  ds = Dataset()
  for elem in base:  # shared, never mutated: per-slice tags below are new elements
    ds.add(elem)
  ds.SOPInstanceUID = sop_uid
  ds.InstanceNumber = i + 1
  ds.ImagePositionPatient = [_ds(v) for v in position]
  ds.SliceLocation = _ds(z)
  ds.file_meta = _file_meta(sop_uid)
  return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: pydicom.uid.UID, i: int) -> None:
  if not transfer_syntax.is_compressed:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = stored.tobytes()
    return
  ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  try:
    ds.compress(transfer_syntax, stored, generate_instance_uid=False)
  except Exception as e:  # encoder plugins raise RuntimeError with their own story
    rows, cols = stored.shape
    raise ValueError(f"cannot encode slice {i} ({rows}x{cols}, {stored.dtype.type.__name__}) as "
                     f"{transfer_syntax.name}: {e}") from e


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


def _file_meta(sop_uid: str) -> FileMetaDataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
  return meta
