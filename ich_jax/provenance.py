"""What software produced a result: ich-jax's version and git commit, Python's, and the libraries' versions.

Recorded, as MONAI bundles' metadata.json records its versions, wherever a
result leaves the process that made it: a run folder's config.json (the
software that trained it, ich_jax.train.config_record), a bundle's manifest
(the software that exported it; each member carries its run's), and a
prediction's report.json (the software that predicted, next to the bundle's).

Read from package metadata and git only, never by importing the libraries:
a prediction install lacks the training ones (None: "not installed"), and
this module sits at the bottom of the package, beside `ich_jax.atomic`.
"""
from __future__ import annotations

import copy
import functools
import importlib.metadata
import pathlib
import platform
import subprocess

# The distribution names whose versions a result records: the numerics (jax, jaxlib, flax, numpy) and the
# training stack (optax, Orbax, TFDS, grain), which a prediction install does not have.
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "optax", "orbax-checkpoint", "tensorflow-datasets", "grain")
DISTRIBUTION = "ich-jax"
# Seconds a git query may take: a hung or slow file system gives None, not a stalled run.
GIT_TIMEOUT_S = 10


def package_root() -> pathlib.Path:
  """The folder holding the imported `ich_jax` package (a checkout's top, or site-packages when installed)."""
  return pathlib.Path(__file__).resolve().parent.parent


def version(name: str) -> str | None:
  """The installed version of distribution `name`, None if it is not installed."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def ich_jax_version() -> str | None:
  """The running code's version: `ich_jax.__version__` (pyproject.toml takes the distribution's version from it),
  else the installed distribution's. The running code first: a checkout run with PYTHONPATH beside an older
  installed wheel must not record the wheel's version."""
  import ich_jax

  return getattr(ich_jax, "__version__", None) or version(DISTRIBUTION)


def _git(root: pathlib.Path, *args: str) -> str | None:
  """`git -C root ARGS`'s stdout, or None when git is missing, fails or takes longer than GIT_TIMEOUT_S."""
  try:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                          check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout if done.returncode == 0 else None


def git_state(root: pathlib.Path) -> tuple[str | None, bool | None]:
  """(commit, dirty) of the git work tree whose top is `root` and holds the ich_jax package; (None, None) when
  `root` is not such a top (an installed package in site-packages: a surrounding repository is not ich-jax's).
  Dirty: tracked files differ from the commit (untracked files are not counted)."""
  top = _git(root, "rev-parse", "--show-toplevel")
  if top is None or pathlib.Path(top.strip()).resolve() != root.resolve() or not (root / "ich_jax").is_dir():
    return None, None
  commit = _git(root, "rev-parse", "HEAD")
  if commit is None:
    return None, None
  status = _git(root, "status", "--porcelain", "--untracked-files=no")
  return commit.strip(), None if status is None else bool(status.strip())


def collect(root: pathlib.Path | None = None) -> dict:
  """The software record (uncached; `software()` is the cached one): {"ich_jax": {"version", "git_commit",
  "git_dirty"}, "python", "packages": {name: version or None}}. `root`: where ich_jax lies (default: the
  imported package's folder)."""
  commit, dirty = git_state(package_root() if root is None else pathlib.Path(root))
  return {"ich_jax": {"version": ich_jax_version(), "git_commit": commit, "git_dirty": dirty},
          "python": platform.python_version(),
          "packages": {name: version(name) for name in PACKAGES}}


@functools.cache
def _cached() -> dict:
  return collect()


def software() -> dict:
  """The software record of this process (`collect`), computed once: the code and libraries do not change
  while it runs. A fresh copy each call, so a caller may edit its own."""
  return copy.deepcopy(_cached())


def describe(record) -> str:
  """One line of a software record for people: "ich-jax 0.1.0 (git 1a2b3c4d5e6f, modified), Python 3.11.7,
  jax 0.10.2, jaxlib 0.10.2, flax 0.12.8, numpy 2.3.1"; "(not recorded)" for None."""
  if not record:
    return "(not recorded)"
  ich = record.get("ich_jax") or {}
  commit = ich.get("git_commit")
  where = (f" (git {commit[:12]}{', modified' if ich.get('git_dirty') else ''})" if commit
           else " (no git commit: an installed package)")
  packages = record.get("packages") or {}
  libs = ", ".join(f"{n} {packages[n]}" for n in ("jax", "jaxlib", "flax", "numpy") if packages.get(n))
  return f"ich-jax {ich.get('version') or '?'}{where}, Python {record.get('python') or '?'}" + (
      f", {libs}" if libs else "")
