"""One writer per folder: a lock file naming its holder (host, pid, command).

A training workdir and a prediction output are each written by one process at
a time; a second launch on the same folder (by mistake, or a second batch
prediction into one output) is refused with the holder's host and pid instead
of interleaving checkpoints and reports.

The lock is an advisory `flock` on `<folder>/.ich-jax.lock` (for a folder that
is itself replaced atomically, e.g. one study's prediction, the lock file sits
beside it: `.<name>.ich-jax.lock`). The kernel releases a flock when its
holder dies, however it dies, so a lock left by a killed process is recovered
without anyone deleting it; the file's content (JSON) only names the holder
for the error message.
"""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import sys
import time

LOCK_NAME = ".ich-jax.lock"


class Locked(RuntimeError):
  """The folder is being written by another live process."""


def lock_path(folder, *, beside: bool = False) -> pathlib.Path:
  """The lock file of `folder`: inside it, or beside it (`beside=True`) for a folder that is swapped whole."""
  folder = pathlib.Path(folder)
  return folder.with_name(f".{folder.name}{LOCK_NAME}") if beside else folder / LOCK_NAME


def _holder(path: pathlib.Path) -> str:
  try:
    h = json.loads(path.read_text())
    return (f"host {h.get('host')}, pid {h.get('pid')} (since {h.get('since')}: "
            f"{' '.join(h.get('command', []))[:200]})")
  except (OSError, ValueError):
    return "a process that has not yet written its name"


class FolderLock:
  """Context manager holding the lock of one folder; `Locked` on entry when another process holds it."""

  def __init__(self, folder, *, beside: bool = False, what: str = "folder"):
    self.folder = pathlib.Path(folder)
    self.path = lock_path(self.folder, beside=beside)
    self.what = what
    self._fd: int | None = None

  def acquire(self) -> "FolderLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise Locked(f"{self.folder}: this {self.what} is being written by another ich-jax process, "
                     f"{_holder(self.path)}; wait for it to finish or stop it (lock file {self.path}; "
                     "a dead holder's lock is released by the system, nothing to delete)") from None
      # A releasing holder may have unlinked the file between our open and flock: lock the file that is there.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    body = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(body) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      self.path.unlink(missing_ok=True)
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "FolderLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
