"""Which optional parts of the install are present: a clear refusal instead of an ImportError deep in a run.

`pip install ich-jax` is the prediction install (a bundle on a study); training, the dataset builders and
bundle export need `pip install "ich-jax[train]"` (pyproject.toml). Modules are looked up, not imported.
"""
from __future__ import annotations

import importlib.util

# The top-level modules of the [train] extra (pyproject.toml), by import name.
TRAIN_MODULES = ("optax", "orbax", "tensorflow_datasets", "array_record", "grain")


def missing(modules=TRAIN_MODULES) -> list[str]:
  """The names among `modules` that cannot be imported here."""
  return [m for m in modules if not _found(m)]


def _found(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a broken install, or an import hook that refuses the name
    return False


def require_training(what: str) -> None:
  """Refuses (SystemExit with the install command) when the [train] extra is not installed."""
  absent = missing()
  if absent:
    raise SystemExit(f"error: {what} needs the training install; missing here: {', '.join(absent)}. "
                     "Install it with: pip install \"ich-jax[train]\" (from a checkout: pip install -e \".[train]\")")
