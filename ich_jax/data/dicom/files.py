"""DICOM files: which files are DICOM (by content, not name), and reading one.

Every reader of this codebase (the series reader, series selection, the
builders) recognises files the same way: a 'DICM' preamble, or a raw data set
starting with a group 0002/0008 tag (old exports). A file named ``*.dcm`` that
is neither is corrupt; other non-DICOM files (CSV, README, .DS_Store) are not
slices and are passed over.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import pydicom
import pydicom.uid
from pydicom.dataset import Dataset

PathLike = str | os.PathLike

# Never DICOM: skipped without opening. Anything else is recognised by content.
NOT_DICOM_SUFFIXES = frozenset({
  ".txt", ".csv", ".json", ".xml", ".md", ".html", ".pdf", ".nii", ".gz",
  ".zip", ".tar", ".png", ".jpg", ".jpeg", ".npy", ".npz", ".py",
})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
_DICOMDIR = pydicom.uid.MediaStorageDirectoryStorage


class DicomError(ValueError):
  """A DICOM file or series that cannot be read as one CT volume."""


def read_header(path: PathLike) -> Dataset:
  """The header of one DICOM file (no pixel data): for fast scanning."""
  ds = read_dataset(pathlib.Path(path), stop_before_pixels=True)
  if ds is None:
    raise DicomError(f"{path}: not a DICOM file (no 'DICM' preamble and no DICOM tag at byte 0)")
  return ds


def dicom_candidates(directory: PathLike | Iterable[PathLike]) -> list[pathlib.Path]:
  """The files under ``directory`` (recursively, sorted), or the given files, that may be DICOM."""
  if isinstance(directory, (str, os.PathLike)):
    root = pathlib.Path(directory)
    if not root.is_dir():
      raise DicomError(f"{root}: not a directory")
    paths = sorted(p for p in root.rglob("*") if p.is_file())
  else:
    paths = [pathlib.Path(p) for p in directory]
  return [p for p in paths if p.suffix.lower() not in NOT_DICOM_SUFFIXES]


def read_all(paths, **kwargs) -> Iterable[tuple[pathlib.Path, Dataset]]:
  """(path, dataset) of every DICOM slice among ``paths``; ``kwargs`` go to ``pydicom.dcmread``."""
  for path in paths:
    ds = read_dataset(path, **kwargs)
    if ds is not None:
      # A DICOMDIR indexes the folder; it is not a slice.
      if ds.get("file_meta", {}).get("MediaStorageSOPClassUID") != _DICOMDIR:
        yield path, ds
    elif path.suffix.lower() in DICOM_SUFFIXES:
      raise DicomError(f"{path}: corrupt DICOM file: no 'DICM' preamble and no DICOM tag at byte 0")


def read_dataset(path: pathlib.Path, **kwargs) -> Dataset | None:
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
