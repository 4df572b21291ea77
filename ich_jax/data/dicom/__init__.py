"""DICOM series: write a CT volume as a valid series, read a folder back into HU.

``from ich_jax.data import dicom`` gives the whole API; each job has its module:
  files     which files are DICOM (by content), reading one header; DicomError
  pixels    PixelData → stored values: the decoder for each transfer syntax
  frames    Enhanced (multi-frame) CT: each frame a slice, read from its functional groups
  geometry  numeric tags, the slice normal, order along it, duplicates and gaps,
            strict (a reader's DicomError) or tolerant (a builder's record)
  hu        stored values → HU: the modality LUT and RSNA's 12-bit quirk
  read      one series from a folder or files, sorted, in HU (``load_series``)
  write     a volume as a series (``write_series``: phantoms, fixtures), in any
            transfer syntax a PACS exports, or as one Enhanced CT file
  affine    a read series' NIfTI affine

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
    two exceptions (``rescale_of``): a slice without the tags is refused unless
    the caller assumes an intercept, and RSNA's 12-bit intercept quirk
    (datasets.md) is corrected for every caller.
"""

from ich_jax.data.dicom.affine import nifti_affine
from ich_jax.data.dicom.files import (DICOM_SUFFIXES, NOT_DICOM_SUFFIXES, DicomError, PathLike, read_dataset,
                                      read_header)
from ich_jax.data.dicom.frames import FrameHeader, frame_headers, is_enhanced
from ich_jax.data.dicom.geometry import ORIENTATION_TOLERANCE, POSITION_TOLERANCE_MM
from ich_jax.data.dicom.hu import (QUIRK_12BIT_INTERCEPT, QUIRK_12BIT_INTERCEPT_ABOVE, RESCALE_TAGS, Rescale,
                                   RescaleMissing, apply_rescale, has_12bit_quirk, rescale_of, slice_hu, to_hu)
from ich_jax.data.dicom.pixels import DECODERS, decoding_plugin, iter_frames
from ich_jax.data.dicom.read import REQUIRED_TAGS, Series, SeriesHeader, load_series, scan_series
from ich_jax.data.dicom.write import ENHANCED_MACROS, Enhanced, write_series

__all__ = [
  "DECODERS", "DICOM_SUFFIXES", "ENHANCED_MACROS", "NOT_DICOM_SUFFIXES", "ORIENTATION_TOLERANCE",
  "POSITION_TOLERANCE_MM", "QUIRK_12BIT_INTERCEPT", "QUIRK_12BIT_INTERCEPT_ABOVE", "REQUIRED_TAGS", "RESCALE_TAGS",
  "DicomError", "Enhanced", "FrameHeader", "PathLike", "Rescale", "RescaleMissing", "Series", "SeriesHeader",
  "apply_rescale", "decoding_plugin", "frame_headers", "has_12bit_quirk", "is_enhanced", "iter_frames",
  "load_series", "nifti_affine", "read_dataset", "read_header", "rescale_of", "scan_series", "slice_hu", "to_hu",
  "write_series",
]
