"""DICOM series: write a CT volume as a valid series, read a folder back into HU.

Conventions used by every caller:
  * A volume is ``[S, H, W]``; S runs along the slice normal, ascending.
  * The normal is ``cross(row direction, column direction)`` of
    ImageOrientationPatient; a slice's z is ImagePositionPatient projected on it.
  * ``spacing = (slice gap, row spacing, column spacing)`` in mm. The gap comes
    from positions (median of neighbouring z differences), never from
    SliceThickness: overlapping reconstructions have thickness > gap, and the
    RSNA 1st-place sequence model calls this gap "slice thickness".
  * HU is the modality LUT (RescaleSlope/RescaleIntercept) applied to the
    stored values, exactly as ``pydicom.pixels.apply_modality_lut`` does, with
    two exceptions (``rescale_of``): a slice without the tags is refused (they
    are Type 1 for CT; the stored values of an unsigned series read ~1024 HU
    too high without them) unless the caller assumes an intercept, and RSNA's
    12-bit intercept quirk (datasets.md) is corrected for every caller.

Series *selection* (CQ500 patients hold thin/thick, plain/contrast, bone/soft
series) is not done here: ``scan_series`` lists a folder's series from headers
only, a selection rule picks one, and ``load_series(files)`` or
``load_series(directory, series_uid=...)`` reads it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import format_number_as_ds

PathLike = str | os.PathLike

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

# Two slices closer than this along the normal are the same position. DS values
# carry 16 characters, so written positions round-trip far below this.
POSITION_TOLERANCE_MM = 1e-3
# Direction cosines are stored with ~6 decimals by most scanners.
ORIENTATION_TOLERANCE = 1e-4

# Brain window (level 40, width 80): the default display window of head CT.
BRAIN_WINDOW = (40.0, 80.0)

# datasets.md (RSNA, "Quirk, 12-bit images"): an unsigned 12-bit slice whose
# RescaleIntercept is above this stores its values offset by -1000 modulo 4096.
QUIRK_12BIT_INTERCEPT_ABOVE = -100.0
QUIRK_12BIT_INTERCEPT = -1000.0
RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")

# Never DICOM: skipped without opening. Anything else is recognised by content.
_NOT_DICOM_SUFFIXES = frozenset({
    ".txt", ".csv", ".json", ".xml", ".md", ".html", ".pdf", ".nii", ".gz",
    ".zip", ".tar", ".png", ".jpg", ".jpeg", ".npy", ".npz", ".py",
})
_DICOMDIR = pydicom.uid.MediaStorageDirectoryStorage
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})


class DicomError(ValueError):
    """A DICOM file or series that cannot be read as one CT volume."""


class RescaleMissing(DicomError):
    """A slice without RescaleSlope/RescaleIntercept, and no intercept assumed (``rescale_of``)."""


# --------------------------------------------------------------------------
# Writing


def write_series(
    volume_hu: np.ndarray,
    spacing: tuple[float, float, float],
    out_dir: PathLike,
    *,
    z_positions: Sequence[float] | np.ndarray | None = None,
    slice_thickness: float | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    patient_id: str = "PHANTOM",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uids: Sequence[str] | None = None,
    series_number: int = 1,
    series_description: str = "HEAD NONCON",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    kernel: str = "STANDARD",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    bits_stored: int = 16,
    pixel_representation: int | None = None,
    clip: bool = False,
    file_names: str | Callable[[int, str], str] = "index",
    transfer_syntax: str = pydicom.uid.ExplicitVRLittleEndian,
    extra_tags: Mapping[str, Any] | None = None,
    rng: np.random.Generator | int | None = None,
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
    pixel_representation, dtype, s_min, s_max = _storage(
        volume_hu, rescale_slope, rescale_intercept, bits_stored, pixel_representation, clip)

    orientation = np.asarray(orientation, np.float64)
    normal = _normal(orientation, "orientation argument")
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

    rng = np.random.default_rng(rng)
    study_uid = study_uid or pydicom.uid.generate_uid()
    series_uid = series_uid or pydicom.uid.generate_uid()
    if sop_uids is None:  # derived from the series UID: a seeded fixture is byte-stable
        sop_uids = [pydicom.uid.generate_uid(entropy_srcs=[series_uid, "sop", str(i)])
                    for i in range(num_slices)]
    elif len(sop_uids) != num_slices or len(set(sop_uids)) != num_slices:
        raise ValueError(f"sop_uids must be {num_slices} distinct values, got {len(sop_uids)} "
                         f"({len(set(sop_uids))} distinct)")
    names = _file_names(file_names, sop_uids, rng)

    base = _series_dataset(
        rows=rows, cols=cols, orientation=orientation, pixel_spacing=(row_spacing, col_spacing),
        slice_thickness=gap if slice_thickness is None else float(slice_thickness),
        patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
        series_number=series_number, series_description=series_description,
        image_type=image_type, kernel=kernel, slope=rescale_slope, intercept=rescale_intercept,
        bits_stored=bits_stored, pixel_representation=pixel_representation,
        extra_tags=extra_tags or {})
    transfer_syntax = pydicom.uid.UID(transfer_syntax)
    native = not transfer_syntax.is_compressed
    if native and not transfer_syntax.is_little_endian:
        raise ValueError(f"transfer_syntax {transfer_syntax.name} is not supported for writing")

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_slices):
        ds = Dataset()
        for elem in base:  # shared, never mutated: per-slice tags below are new elements
            ds.add(elem)
        ds.SOPInstanceUID = sop_uids[i]
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[i]]
        ds.SliceLocation = _ds(z[i])
        ds.file_meta = _file_meta(sop_uids[i])
        stored = np.clip(_to_stored(volume_hu[i], rescale_slope, rescale_intercept),
                         s_min, s_max).astype(dtype)
        if native:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.PixelData = stored.tobytes()
        else:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            try:
                ds.compress(transfer_syntax, stored, generate_instance_uid=False)
            except Exception as e:  # encoder plugins raise RuntimeError with their own story
                raise ValueError(f"cannot encode slice {i} ({rows}x{cols}, {dtype.__name__}) as "
                                 f"{transfer_syntax.name}: {e}") from e
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


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return meta


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


# --------------------------------------------------------------------------
# Reading


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


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
    """What ``scan_series`` knows about a series without reading pixels."""

    series_uid: str
    description: str
    files: tuple[pathlib.Path, ...]
    header: Dataset  # one slice's header: ImageType, ConvolutionKernel, SliceThickness, ...


def read_header(path: PathLike) -> Dataset:
    """The header of one DICOM file (no pixel data): for fast scanning."""
    ds = _read(pathlib.Path(path), stop_before_pixels=True)
    if ds is None:
        raise DicomError(f"{path}: not a DICOM file (no 'DICM' preamble and no DICOM tag at byte 0)")
    return ds


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
    intercept = _number(ds.get("RescaleIntercept"))
    return (int(ds.get("BitsStored", 0) or 0) == 12 and int(ds.get("PixelRepresentation", 1)) == 0
            and intercept is not None and intercept > QUIRK_12BIT_INTERCEPT_ABOVE)


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
        value = _number(raw)
        if value is None or not np.isfinite(value):
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
    return apply_rescale(ds.pixel_array, rescale), rescale


def to_hu(ds: Dataset, *, assume_intercept: float | None = None) -> np.ndarray:
    """One slice in HU (float32): the modality LUT applied to the stored values (``slice_hu``)."""
    return slice_hu(ds, assume_intercept=assume_intercept)[0]


def _number(value) -> float | None:
    """A DS/IS tag's value as a float (the first of a multi-valued one); None if absent or not numeric."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not len(value):
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _where(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or "<dataset>")


def scan_series(directory: PathLike | Iterable[PathLike]) -> dict[str, SeriesHeader]:
    """The series under ``directory`` (recursively), from headers only."""
    groups = _by_series(_read_all(_dicom_candidates(directory), stop_before_pixels=True))
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
    candidates = _dicom_candidates(directory)
    # Pixel data is deferred (read when decoded), so a folder holding several
    # series costs header parses for the series not chosen.
    groups = _by_series(_read_all(candidates, stop_before_pixels=False, defer_size="64 KB"))
    where = directory if isinstance(directory, (str, os.PathLike)) else f"{len(candidates)} files"
    if not groups:
        raise DicomError(f"no DICOM files in {where}")
    if series_uid is None:
        if len(groups) > 1:
            raise DicomError(f"{len(groups)} series in {where}; pass series_uid=one of:\n"
                             + _describe(groups))
        (series_uid,) = groups
    elif series_uid not in groups:
        raise DicomError(f"SeriesInstanceUID {series_uid} not in {where}; present:\n"
                         + _describe(groups))
    return _assemble(groups[series_uid], assume_intercept)


def _by_series(items) -> dict[str, list[tuple[pathlib.Path, Dataset]]]:
    groups: dict[str, list[tuple[pathlib.Path, Dataset]]] = {}
    for path, ds in items:
        groups.setdefault(str(_require(ds, path, "SeriesInstanceUID")), []).append((path, ds))
    return groups


def _describe(groups) -> str:
    return "\n".join(
        f"  {uid}  {str(items[0][1].get('SeriesDescription', ''))!r}  {len(items)} files"
        for uid, items in sorted(groups.items()))


def _assemble(items: list[tuple[pathlib.Path, Dataset]], assume_intercept: float | None = None) -> Series:
    first_path, first = items[0]
    orientation = _floats(first, first_path, "ImageOrientationPatient", 6)
    normal = _normal(orientation, f"{first_path}: ImageOrientationPatient")
    shape = (int(_require(first, first_path, "Rows")), int(_require(first, first_path, "Columns")))
    pixel_spacing = _floats(first, first_path, "PixelSpacing", 2)

    positions = np.empty((len(items), 3))
    rescales = []
    for i, (path, ds) in enumerate(items):
        for tag in REQUIRED_TAGS:
            _require(ds, path, tag)
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
        o = _floats(ds, path, "ImageOrientationPatient", 6)
        if not np.allclose(o, orientation, atol=ORIENTATION_TOLERANCE):
            raise DicomError(f"{path}: ImageOrientationPatient {o.tolist()} differs from "
                             f"{orientation.tolist()} in {first_path}")
        ps = _floats(ds, path, "PixelSpacing", 2)
        if not np.allclose(ps, pixel_spacing, rtol=1e-4):
            raise DicomError(f"{path}: PixelSpacing {ps.tolist()} differs from "
                             f"{pixel_spacing.tolist()} in {first_path}")
        positions[i] = _floats(ds, path, "ImagePositionPatient", 3)

    z = positions @ normal
    order = np.argsort(z, kind="stable")
    z, positions = z[order], positions[order]
    items = [items[i] for i in order]
    rescales = [rescales[i] for i in order]
    gaps = np.diff(z)
    if gaps.size and gaps.min() < POSITION_TOLERANCE_MM:
        k = int(np.argmin(gaps))
        raise DicomError(f"duplicate slice position z={z[k]:.4f} mm (ImagePositionPatient "
                         f"{positions[k].tolist()}) in {items[k][0]} and {items[k + 1][0]}")

    thickness = first.get("SliceThickness")
    thickness = float("nan") if thickness in (None, "") else float(thickness)
    gap = float(np.median(gaps)) if gaps.size else thickness

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

    return Series(
        hu=hu,
        z_positions=z,
        spacing=(gap, float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_thickness=thickness,
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        patient_id=str(first.get("PatientID", "")),
        sop_uids=[str(ds.SOPInstanceUID) for _, ds in items],
        files=[p for p, _ in items],
        orientation=orientation,
        positions=positions,
        series_description=str(first.get("SeriesDescription", "")),
        notes=_rescale_notes(rescales, assume_intercept),
    )


def _rescale_notes(rescales: Sequence[Rescale], assume_intercept: float | None) -> list[str]:
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


def _normal(orientation: np.ndarray, where: str) -> np.ndarray:
    if orientation.shape != (6,):
        raise DicomError(f"{where}: ImageOrientationPatient needs 6 values, got {orientation.tolist()}")
    normal = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 0.5:
        raise DicomError(f"{where}: ImageOrientationPatient {orientation.tolist()} has "
                         "parallel or zero row/column directions")
    return normal / norm


def _require(ds: Dataset, path: pathlib.Path, keyword: str):
    value = ds.get(keyword)
    if value is None or value == "":
        raise DicomError(f"{path}: missing required tag {keyword}")
    return value


def _floats(ds: Dataset, path: pathlib.Path, keyword: str, n: int) -> np.ndarray:
    value = _require(ds, path, keyword)
    try:
        out = np.asarray([float(v) for v in (value if isinstance(value, Sequence)
                                              and not isinstance(value, str) else [value])])
    except (TypeError, ValueError) as e:
        raise DicomError(f"{path}: {keyword} is not numeric: {value!r}") from e
    if out.shape != (n,) or not np.isfinite(out).all():
        raise DicomError(f"{path}: {keyword} needs {n} finite numbers, got {value!r}")
    return out


def _dicom_candidates(directory: PathLike | Iterable[PathLike]) -> list[pathlib.Path]:
    if isinstance(directory, (str, os.PathLike)):
        root = pathlib.Path(directory)
        if not root.is_dir():
            raise DicomError(f"{root}: not a directory")
        paths = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        paths = [pathlib.Path(p) for p in directory]
    return [p for p in paths if p.suffix.lower() not in _NOT_DICOM_SUFFIXES]


def _read_all(paths, **kwargs) -> Iterable[tuple[pathlib.Path, Dataset]]:
    for path in paths:
        ds = _read(path, **kwargs)
        if ds is not None:
            # A DICOMDIR indexes the folder; it is not a slice.
            if ds.get("file_meta", {}).get("MediaStorageSOPClassUID") != _DICOMDIR:
                yield path, ds
        elif path.suffix.lower() in DICOM_SUFFIXES:
            raise DicomError(f"{path}: corrupt DICOM file: no 'DICM' preamble and no DICOM tag at byte 0")


def _read(path: pathlib.Path, **kwargs) -> Dataset | None:
    """One dcmread; None when the bytes are not DICOM at all."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise DicomError(f"{path}: unreadable: {e}") from e
    if head[128:132] == b"DICM":
        force = False
    elif head[:2] in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
        force = True  # a raw data set without preamble (old exports), little or big endian
    else:
        return None
    try:
        return pydicom.dcmread(path, force=force, **kwargs)
    except Exception as e:  # pydicom raises many types on truncated or garbled input
        raise DicomError(f"{path}: corrupt DICOM file: {type(e).__name__}: {e}") from e


def nifti_affine(series: Series) -> np.ndarray:
    """The RAS affine of ``series`` stored NIfTI-style: ``array[i, j, k] = series.hu[k, j, i]``.

    i runs along a row (the row direction, ImageOrientationPatient[:3], column
    spacing), j down the columns (ImageOrientationPatient[3:], row spacing), k
    along the sorted slices (their mean ImagePositionPatient step, so a tilted
    gantry's shear is kept). DICOM's patient frame is LPS; NIfTI's is RAS, hence
    the sign flip of x and y. A one-slice series steps one gap (the
    SliceThickness) along the normal.
    """
    o = np.asarray(series.orientation, np.float64)
    row_dir, col_dir = o[:3], o[3:]
    n = len(series.z_positions)
    if n > 1:
        step = (series.positions[-1] - series.positions[0]) / (n - 1)
    else:
        gap = series.spacing[0] if np.isfinite(series.spacing[0]) and series.spacing[0] > 0 else 1.0
        step = _normal(o, "series orientation") * gap
    lps = np.eye(4)
    lps[:3, 0] = row_dir * series.spacing[2]
    lps[:3, 1] = col_dir * series.spacing[1]
    lps[:3, 2] = step
    lps[:3, 3] = series.positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
