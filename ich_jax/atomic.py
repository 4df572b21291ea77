"""Files and folders written atomically, and only over what ich-jax itself wrote.

A reader (or a rerun after a crash) sees the old content or the complete new
one, never a half-written file or folder:

- a file (`write_text`, `write_bytes`, `open_write`) is written to a hidden
  temporary file beside it, flushed to disk (fsync), then renamed over the
  destination (`os.replace`, atomic on POSIX);
- a folder (`begin` … `commit`) is built in a hidden temporary folder beside
  it and swapped with the old one in one step (Linux `renameat2` with
  `RENAME_EXCHANGE`), so the destination path always names a complete folder.
  Where the file system cannot exchange (not Linux, or a file system without
  the flag), the old folder is renamed aside first and there is a moment
  with no folder at the path; `commit` says which happened.

Every folder written this way carries a marker file (`MARKER`, JSON: what
wrote it and when). A folder that exists, is not empty and has no marker was
not written by ich-jax, and is never replaced or deleted: `begin` refuses it
with `NotOurs` before any work is done. Temporary names hold the host and
process id, so a leftover of a killed process is recognised as ours and
removed by the next writer of that path on that host, and nothing else ever is.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import pathlib
import shutil
import socket
import time
from collections.abc import Iterable

MARKER = ".ich-jax-output.json"
_TMP_TAG = ".ich-jax-tmp"
_OLD_TAG = ".ich-jax-old"
# Outputs written before the marker existed, recognised by their own format field: (file, field, value, kind).
_LEGACY = (("manifest.json", "format", "ich-jax-bundle", "bundle"),
           ("report.json", "format", "ich-jax-prediction", "prediction"),
           ("meta.json", "format", 1, "features"))


class NotOurs(ValueError):
  """An output path that holds something ich-jax did not write (or that would overwrite an input)."""


# --- Files ----------------------------------------------------------------------------------------


def _tmp_name(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(f".{path.name}{_TMP_TAG}.{socket.gethostname()}.{os.getpid()}.{time.monotonic_ns()}")


def _fsync_dir(directory: pathlib.Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:   # some file systems do not sync directories; the rename is still atomic
    pass
  finally:
    os.close(fd)


def _fsync_tree(directory: pathlib.Path) -> None:
  """Flushes every file under `directory`, and the folders themselves, to disk (before it is renamed into
  place: after a power cut the new folder is whole, not a set of names with empty files)."""
  for path in sorted(directory.rglob("*"), reverse=True):
    if path.is_file() and not path.is_symlink():
      with open(path, "rb") as f:
        os.fsync(f.fileno())
    elif path.is_dir():
      _fsync_dir(path)
  _fsync_dir(directory)


@contextlib.contextmanager
def open_write(path, mode: str = "wb", **kwargs):
  """`open(path, mode)` whose content appears at `path` only when the block ends without an error.

  The file is written beside `path` under a hidden temporary name, fsynced and
  renamed over `path`; on an error (or a kill) `path` keeps its old content and
  the temporary file is removed (or, after a kill, left hidden and harmless).
  """
  if mode not in ("w", "wb", "wt"):
    raise ValueError(f"open_write mode={mode!r}: only whole-file writes ('w', 'wb') can be atomic")
  path = pathlib.Path(path)
  _remove_leftovers(path, folders=False)
  tmp = _tmp_name(path)
  f = open(tmp, mode, **kwargs)
  try:
    yield f
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
  except BaseException:
    f.close()
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)


def write_bytes(path, data: bytes) -> pathlib.Path:
  with open_write(path, "wb") as f:
    f.write(data)
  return pathlib.Path(path)


def write_text(path, text: str) -> pathlib.Path:
  with open_write(path, "w", encoding="utf-8") as f:
    f.write(text)
  return pathlib.Path(path)


# --- Whose folder is it ---------------------------------------------------------------------------


def kind_of(directory) -> str | None:
  """The kind of output ich-jax wrote in `directory` ("prediction", "bundle", ...), or None if it did not."""
  directory = pathlib.Path(directory)
  try:
    return str(json.loads((directory / MARKER).read_text())["kind"])
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, TypeError):
    return None
  for name, field, value, kind in _LEGACY:
    try:
      if json.loads((directory / name).read_text()).get(field) == value:
        return kind
    except (OSError, ValueError, AttributeError):
      continue
  return None


def is_ours(directory, kind: str | None = None) -> bool:
  """True when ich-jax wrote `directory` (and, with `kind`, wrote that kind of output there)."""
  found = kind_of(directory)
  return found is not None and (kind is None or found == kind)


def check_replaceable(directory, kind: str | None = None) -> None:
  """Raises NotOurs unless `directory` is absent, an empty folder, or a folder ich-jax wrote (of `kind`)."""
  directory = pathlib.Path(directory)
  if not directory.exists() and not directory.is_symlink():
    return
  if directory.is_symlink() or not directory.is_dir():
    raise NotOurs(f"{directory}: exists and is not a folder ich-jax wrote (a file or a link); choose another "
                  "output path, or move it away yourself")
  found = kind_of(directory)
  if (found is not None and (kind is None or found == kind)) or not any(directory.iterdir()):
    return
  if found is not None:
    raise NotOurs(f"{directory}: holds an ich-jax {found} output, not a {kind}; it is left alone: choose "
                  "another output path")
  raise NotOurs(f"{directory}: exists, is not empty and was not written by ich-jax (no {MARKER}); it would be "
                "replaced, so it is left alone: choose another output path, or move it away yourself")


def check_output(output, kind: str | None = None, *, inputs: Iterable = (), protected: Iterable = ()) -> pathlib.Path:
  """Refuses an output folder that would overwrite what it reads or what must survive.

  `inputs`: the output must not equal, lie inside, or contain any of them (a
  prediction written into the incoming folder would replace the studies).
  `protected` (workdirs, checkpoints): the output must not equal or contain
  them (it may lie inside one, e.g. `<workdir>/bundle`). Then `check_replaceable(output, kind)`.
  Returns the output's absolute path.
  """
  out = pathlib.Path(output).absolute().resolve()
  for p in inputs:
    p = pathlib.Path(p).absolute().resolve()
    if out == p or p in out.parents or out in p.parents:
      what = "is" if out == p else ("lies inside" if p in out.parents else "contains")
      raise NotOurs(f"output {output} {what} the input {p}: replacing it would delete the input; "
                    "choose an output folder outside the input")
  for p in protected:
    p = pathlib.Path(p).absolute().resolve()
    if out == p or out in p.parents:
      raise NotOurs(f"output {output} {'is' if out == p else 'contains'} {p}, which must not be replaced "
                    "(a run folder with checkpoints); choose a folder inside it or elsewhere")
  check_replaceable(out, kind)
  return out


def mark(directory, kind: str, **info) -> pathlib.Path:
  """Writes the marker into `directory` (a folder ich-jax writes into without replacing it, e.g. a batch root)."""
  body = {"written_by": "ich-jax", "kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
  return write_text(pathlib.Path(directory) / MARKER, json.dumps(body, indent=2) + "\n")


# --- Folders -------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_leftovers(path: pathlib.Path, *, folders: bool = True) -> None:
  """Removes this host's temporary (and old) copies of `path` whose writer process is gone: folders that
  carry our marker, or (folders=False) files, which carry our name pattern with host and pid."""
  host = socket.gethostname()
  if not path.parent.is_dir():
    return
  for p in path.parent.glob(f".{glob.escape(path.name)}.ich-jax-*"):
    parts = p.name[len(path.name) + 1:].split(".")
    # .<name>.ich-jax-tmp.<host>.<pid>.<ns>: the host may itself hold dots.
    if len(parts) < 5 or f".{parts[1]}" not in (_TMP_TAG, _OLD_TAG):
      continue
    p_host, p_pid = ".".join(parts[2:-2]), parts[-2]
    if p_host != host or not p_pid.isdigit() or _pid_alive(int(p_pid)):
      continue
    if folders and p.is_dir() and not p.is_symlink() and is_ours(p):
      shutil.rmtree(p, ignore_errors=True)
    elif not folders and p.is_file() and not p.is_symlink():
      p.unlink(missing_ok=True)


def begin(directory, kind: str, **info) -> pathlib.Path:
  """A fresh hidden folder beside `directory` to write into, with ich-jax's marker in it.

  Refuses first (NotOurs) if `directory` holds something ich-jax did not
  write (or another kind of ich-jax output: a prediction never replaces a
  bundle), so no work is done towards an output that could not be committed.
  """
  directory = pathlib.Path(directory)
  check_replaceable(directory, kind)
  directory.parent.mkdir(parents=True, exist_ok=True)
  _remove_leftovers(directory)
  tmp = _tmp_name(directory)
  tmp.mkdir()
  mark(tmp, kind, **info)
  return tmp


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
    return False
  raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def commit(tmp, directory) -> pathlib.Path:
  """Puts the finished `tmp` (from `begin`) at `directory`, replacing the folder there (checked again: ours).

  With an exchange the path names the old folder until the instant it names
  the new one; without one (see the module docstring) it is briefly absent.
  """
  tmp, directory = pathlib.Path(tmp), pathlib.Path(directory)
  _fsync_tree(tmp)
  if not directory.exists():
    tmp.rename(directory)
  else:
    check_replaceable(directory, kind_of(tmp))
    if _exchange(tmp, directory):
      old = tmp                                   # after the exchange, tmp names the old folder
    else:
      old = directory.with_name(tmp.name.replace(_TMP_TAG, _OLD_TAG))
      directory.rename(old)
      tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
  _fsync_dir(directory.parent)
  return directory


def abandon(tmp) -> None:
  """Removes a temporary folder from `begin` after a failure (only such a folder: it carries the marker)."""
  tmp = pathlib.Path(tmp)
  if _TMP_TAG in tmp.name and is_ours(tmp):
    shutil.rmtree(tmp, ignore_errors=True)


def remove(directory, kind: str) -> bool:
  """Deletes `directory` only if ich-jax wrote it as `kind`; returns whether it did."""
  directory = pathlib.Path(directory)
  if directory.is_dir() and not directory.is_symlink() and is_ours(directory, kind):
    shutil.rmtree(directory)
    return True
  return False
