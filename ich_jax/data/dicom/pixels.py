"""PixelData → stored values: which decoder reads which transfer syntax, and saying so when none can.

PACS exports CT compressed. pydicom reads the uncompressed syntaxes (implicit
and explicit little endian, explicit big endian, deflated) and RLE Lossless
itself (numpy); the others need a plugin. The plugin per syntax is chosen
here, by name, from what pydicom reports as installed, so the decoder does
not depend on which plugin happened to be imported first:

  JPEG Lossless (.4.57, .4.70: the usual lossless CT export), JPEG baseline/
    extended: python-gdcm (BSD). pylibjpeg-libjpeg also decodes them but is
    GPLv3, which would bind anyone who ships ich-jax; it is not a dependency
    (pydicom still uses it if a user installs it and gdcm is absent).
  JPEG-LS (.4.80, .4.81): python-gdcm, else pyjpegls (MIT; CharLS, BSD).
  JPEG 2000 (.4.90, .4.91): pylibjpeg-openjpeg (MIT; OpenJPEG, BSD), else gdcm.
  HTJ2K (.4.201-.4.203): pylibjpeg-openjpeg.

A syntax without an installed decoder is a DicomError naming the file, the
TransferSyntaxUID, its name and the package to install.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom.uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder, iter_pixels

from ich_jax.data.dicom.files import DicomError

_GDCM = "python-gdcm (BSD)"
_OPENJPEG = "pylibjpeg and pylibjpeg-openjpeg (MIT)"

# Syntax → (plugins tried first, in order; what to install when none is there). A plugin not listed is used
# only when none listed is installed and pydicom has another (e.g. Pillow for JPEG 2000).
DECODERS: dict[str, tuple[tuple[str, ...], str]] = {
  uids.RLELossless: (("pydicom", "pylibjpeg", "gdcm"), "nothing (pydicom decodes RLE itself)"),
  uids.JPEGBaseline8Bit: (("gdcm", "pylibjpeg", "pillow"), _GDCM),
  uids.JPEGExtended12Bit: (("gdcm", "pylibjpeg", "pillow"), _GDCM),
  uids.JPEGLossless: (("gdcm",), _GDCM),
  uids.JPEGLosslessSV1: (("gdcm",), _GDCM),
  uids.JPEGLSLossless: (("gdcm", "pyjpegls"), f"{_GDCM} or pyjpegls (MIT)"),
  uids.JPEGLSNearLossless: (("gdcm", "pyjpegls"), f"{_GDCM} or pyjpegls (MIT)"),
  uids.JPEG2000Lossless: (("pylibjpeg", "gdcm"), _OPENJPEG),
  uids.JPEG2000: (("pylibjpeg", "gdcm"), _OPENJPEG),
  uids.HTJ2KLossless: (("pylibjpeg",), _OPENJPEG),
  uids.HTJ2KLosslessRPCL: (("pylibjpeg",), _OPENJPEG),
  uids.HTJ2K: (("pylibjpeg",), _OPENJPEG),
}


def transfer_syntax(ds: Dataset) -> uids.UID:
  """The data set's TransferSyntaxUID (a raw data set without file meta: what pydicom read it as)."""
  uid = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
  if uid is None:
    implicit, little = ds.original_encoding
    uid = (uids.ImplicitVRLittleEndian if implicit else
           uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian)
  return uids.UID(uid)


def decoding_plugin(syntax: str, where) -> str:
  """The pydicom decoding plugin for ``syntax`` ("" for the uncompressed syntaxes: pydicom's own reader).

  Raises:
    DicomError: naming ``where``, the syntax and what to install, when no
      decoder for it is installed or pydicom has none at all.
  """
  syntax = uids.UID(syntax)
  name = f"TransferSyntaxUID {syntax} ({syntax.name})" if syntax.is_valid else f"TransferSyntaxUID {syntax!r}"
  try:
    decoder = get_decoder(syntax)
  except NotImplementedError as e:
    raise DicomError(f"{where}: {name} is not a transfer syntax ich-jax can decode") from e
  if decoder.is_native:
    return ""
  preferred, install = DECODERS.get(syntax, ((), "a pydicom pixel data plugin for it"))
  available = decoder.available_plugins
  for plugin in preferred:
    if plugin in available:
      return plugin
  if available:
    return ""  # pydicom's own choice among the installed others
  raise DicomError(f"{where}: PixelData in {name} cannot be decoded: no decoder installed; install {install}")


def iter_frames(ds: Dataset, where) -> Iterator[np.ndarray]:
  """Each frame's stored values [H, W] in file order (one for a single-frame image), by ``decoding_plugin``.

  Raises:
    DicomError: no decoder (``decoding_plugin``), or the decoder failed,
      naming ``where``, the syntax and the plugin.
  """
  syntax = transfer_syntax(ds)
  plugin = decoding_plugin(syntax, where)
  if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
    # A raw data set without file meta (old exports, read by content): pydicom decodes only with the syntax
    # named, which is the encoding it was read in.
    if not hasattr(ds, "file_meta"):
      ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
  frames = iter_pixels(ds, decoding_plugin=plugin)
  while True:
    try:
      frame = next(frames)
    except StopIteration:
      return
    except Exception as e:  # decoders raise anything: name the file, the syntax and the plugin
      raise DicomError(f"{where}: cannot decode PixelData (TransferSyntaxUID {syntax} ({syntax.name}), "
                       f"decoder {plugin or 'pydicom'}): {type(e).__name__}: {e}") from e
    yield frame



def single_frame(ds: Dataset, where) -> np.ndarray:
  """A single-frame image's stored values [H, W] (``iter_frames``); DicomError naming ``where`` if it has more."""
  frames = iter_frames(ds, where)
  first = next(frames, None)
  if first is None or next(frames, None) is not None:
    raise DicomError(f"{where}: NumberOfFrames is {ds.get('NumberOfFrames')}; one slice was expected here "
                     "(load_series reads multi-frame files)")
  return first
