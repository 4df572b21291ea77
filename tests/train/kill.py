"""Runs a script (launch.py) or a statement in a process that SIGKILLs itself at a chosen point: a crash
the tests can reproduce, with no hook in the code under test.

  python tests/train/kill.py write NAME  launch.py ARGS...   mid-write: once half of the first write to a file
                                                            named NAME (or its hidden temporary file) is on
                                                            disk, the rest never is
  python tests/train/kill.py step K      launch.py ARGS...   right after metrics.jsonl's row for step K
  python tests/train/kill.py save K      launch.py ARGS...   while saving checkpoint K: its files written into
                                                            Orbax's temporary folder, not yet renamed to K
  python tests/train/kill.py MODE ARG    -c CODE             the same around a Python statement
"""
import builtins
import io
import os
import pathlib
import runpy
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


class _HalfWrite:
  """A file whose first write puts half its data on disk, then kills the process."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:max(1, len(data) // 2)])
    self._f.flush()
    os.fsync(self._f.fileno())
    die()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._f.__exit__(*exc)

  def __iter__(self):
    return iter(self._f)

  def __getattr__(self, name):
    return getattr(self._f, name)


def kill_in_write(name: str) -> None:
  real = builtins.open

  def opener(file, mode="r", *args, **kwargs):
    f = real(file, mode, *args, **kwargs)
    writing = any(m in mode for m in "wax+")
    # ich_jax.atomic writes `.NAME.ich-jax-tmp.<host>.<pid>.<ns>` beside NAME, then renames it.
    named = isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)).lstrip(".").startswith(name)
    return _HalfWrite(f) if writing and named else f

  builtins.open = io.open = opener


def kill_after_row(step: int) -> None:
  from ich_jax.train import summary

  real = summary.SummaryWriter.scalars

  def scalars(self, at, values):
    real(self, at, values)
    if int(at) == step:
      die()

  summary.SummaryWriter.scalars = scalars


def kill_in_save(step: int) -> None:
  # The step folder is written under a temporary name and renamed by finalize(): die just before the rename.
  from orbax.checkpoint._src.path import atomicity

  real = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      die()
    return await real(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main(argv: list[str]) -> None:
  mode, arg, *rest = argv
  sys.path.insert(0, str(ROOT))
  {"write": lambda: kill_in_write(arg), "step": lambda: kill_after_row(int(arg)),
   "save": lambda: kill_in_save(int(arg))}[mode]()
  if rest[0] == "-c":
    exec(compile(rest[1], "<kill.py -c>", "exec"), {"__name__": "__main__"})
  else:
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
  main(sys.argv[1:])
