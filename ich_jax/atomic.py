"""Folders written atomically: built beside their destination, then swapped in.

A reader (or a rerun after a crash) sees the old folder or the complete new
one, never a half-written one. A leftover `<name>.tmp` is an interrupted write.
"""
from __future__ import annotations

import pathlib
import shutil


def begin(directory) -> pathlib.Path:
  """A fresh, empty `<directory>.tmp` to write into (an interrupted earlier attempt is removed)."""
  directory = pathlib.Path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  return tmp


def commit(tmp, directory) -> pathlib.Path:
  """Replaces `directory` (if any) by the finished `tmp`."""
  tmp, directory = pathlib.Path(tmp), pathlib.Path(directory)
  old = directory.with_name(directory.name + ".old")
  if directory.exists():
    shutil.rmtree(old, ignore_errors=True)
    directory.rename(old)
  tmp.rename(directory)
  shutil.rmtree(old, ignore_errors=True)
  return directory
