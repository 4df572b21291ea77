"""Datasets by name: find a TFDS builder, build it once, open a split as a random-access source.

Builders live in `data_builders/<name>/` and write ArrayRecord; reading goes
through `tfds.data_source`, so no TensorFlow is needed at run time.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib

import numpy as np

from ich_jax.data import folds, records

# name → "module:Class" of its TFDS builder (imported only when used).
BUILDERS = {
    "synthetic_ich": "data_builders.synthetic_ich.synthetic_ich:SyntheticIch",
    "rsna_ich": "data_builders.rsna_ich.rsna_ich:RsnaIch",
    "physionet_ct_ich": "data_builders.physionet_ct_ich.physionet_ct_ich:PhysionetCtIch",
    "cq500": "data_builders.cq500.cq500:Cq500",
}


def builder_class(name: str):
  if name not in BUILDERS:
    raise KeyError(f"config dataset.name={name!r} is not a known dataset; known: {', '.join(sorted(BUILDERS))}")
  module, cls = BUILDERS[name].split(":")
  return getattr(importlib.import_module(module), cls)


# The configs' data_dir; TFDS_DATA_DIR (TFDS's own variable) replaces it when set, so a shared dataset folder
# serves every config without a flag. Any other data_dir (--config.dataset.data_dir=...) is used as given.
DEFAULT_DATA_DIR = "data/tfds"


def data_dir(config) -> str:
  """The absolute folder datasets are built in and read from: `config.data_dir`, or $TFDS_DATA_DIR in place of
  the default `data/tfds` (relative paths are the working directory's)."""
  d = str(config.data_dir)
  if os.environ.get("TFDS_DATA_DIR") and pathlib.PurePath(d) == pathlib.PurePath(DEFAULT_DATA_DIR):
    d = os.environ["TFDS_DATA_DIR"]
  return str(pathlib.Path(d).expanduser().absolute())


def builder(config):
  """The TFDS builder for `config.name` / `config.config` in `config.data_dir`."""
  # manual_dir (the real datasets' unpacked download) reaches the builder through
  # ensure_built's DownloadConfig; TFDS builders take no manual_dir argument.
  kwargs = {"data_dir": data_dir(config), "config": builder_config(config), "file_format": "array_record"}
  return builder_class(config.name)(**kwargs)


def builder_config(config):
  """`config.config`, the builder config's name; with `config.exclude_chronic` (physionet_ct_ich: leave out
  the chronic-ICH subject, seed 002 §3) that config with the option set, named `<config>_exclude_chronic`,
  which TFDS builds in a folder of its own."""
  if not config.get("exclude_chronic", False):
    return config.config
  cls = builder_class(config.name)
  base = cls.builder_configs.get(config.config)
  if base is None or not hasattr(base, "exclude_chronic"):
    raise ValueError(f"config dataset.exclude_chronic=True: dataset {config.name}/{config.config} has no "
                     "chronic-ICH exclusion (physionet_ct_ich has)")
  return dataclasses.replace(base, name=f"{base.name}_exclude_chronic", exclude_chronic=True)


def ensure_built(config) -> None:
  """Builds the dataset if its folder is not complete yet (TFDS writes to a temporary folder first)."""
  import tensorflow_datasets as tfds

  b = builder(config)
  if not b.is_prepared():
    print(f"Building dataset {config.name}/{config.config} in {data_dir(config)} (once) ...", flush=True)
    tfds.display_progress_bar(False)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=config.get("manual_dir") or None))
  print(f"Dataset {config.name}/{b.builder_config.name}: {pathlib.Path(str(b.data_dir)).absolute()}", flush=True)


def open_split(config, split: str):
  """Random-access source over one split (`len`, `[i]` → dict of numpy arrays).

  `split` is a TFDS split name ("train", "train[:10%]", "fold0+fold1"), or a
  fold of one (`train[fold=K/N]`, `train[fold!=K/N]`: `ich_jax.data.folds`,
  by `study_id`).
  """
  b = builder(config)
  if not b.is_prepared():
    raise FileNotFoundError(
        f"dataset {config.name}/{b.builder_config.name} is not built in {data_dir(config)}; "
        f"run training (which builds it) or ich_jax.data.datasets.ensure_built first")
  fold = None
  if folds.is_fold_split(split):
    split, fold = folds.parse_split(split)
  # "fold0+fold1+fold2" (physionet_ct_ich's folds) joins splits; each part must exist.
  for part in split.split("+"):
    if part.split("[")[0] not in b.info.splits:
      raise KeyError(f"dataset {config.name}/{config.config} has no split {part!r}; it has {list(b.info.splits)}")
  # The same records as b.as_data_source(split), decoded without TFDS's per-feature decode (ich_jax.data.records).
  source = records.decoded_source(b, split)
  if fold is None:
    return source
  study_ids = read_field(metadata_source(b, split), "study_id")
  return RecordSubset(source, folds.fold_rows(study_ids, fold))


# Features a metadata pass never needs decoded.
_PIXEL_FEATURES = ("image", "mask", "volume", "masks")


def metadata_source(b, split: str):
  """The split with its pixel features left undecoded: cheaper for passes over ids and labels."""
  import tensorflow_datasets as tfds

  skip = {k: tfds.decode.SkipDecoding() for k in _PIXEL_FEATURES if k in b.info.features}
  return b.as_data_source(split=split, decoders=skip or None)


class MissingField(KeyError):
  """A record lacks a field a caller reads (`key`, `record`: its index)."""

  def __init__(self, key: str, record: int, present):
    super().__init__(f"record {record} has no field {key!r} (it has {sorted(present)})")
    self.key, self.record = key, record


def read_fields(source, keys, chunk: int = 1024) -> dict[str, np.ndarray]:
  """Fields `keys` of every record of `source`, in record order, read in chunks (`__getitems__` if it has one)."""
  getitems = getattr(source, "__getitems__", None)
  values: dict[str, list] = {k: [] for k in keys}
  for start in range(0, len(source), chunk):
    ids = list(range(start, min(len(source), start + chunk)))
    for i, rec in zip(ids, getitems(ids) if getitems is not None else [source[i] for i in ids]):
      for k in keys:
        if k not in rec:
          raise MissingField(k, i, rec)
        values[k].append(np.asarray(rec[k]))
  return {k: np.stack(v) if v else np.zeros((0,)) for k, v in values.items()}


def read_field(source, key: str, chunk: int = 1024) -> np.ndarray:
  """One field of every record of `source`, in record order."""
  return read_fields(source, (key,), chunk)[key]


class RecordSubset:
  """Records `rows` of a random-access source, renumbered 0 … len(rows)-1."""

  def __init__(self, source, rows):
    self.source = source
    self.rows = np.asarray(rows, np.int64)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int):
    if not -len(self.rows) <= int(i) < len(self.rows):
      raise IndexError(f"record {i} of a {len(self.rows)}-record subset")
    return self.source[int(self.rows[int(i)])]

  def __getitems__(self, ids):
    rows = [int(self.rows[int(i)]) for i in ids]
    getitems = getattr(self.source, "__getitems__", None)
    return getitems(rows) if getitems is not None else [self.source[r] for r in rows]


def cv_round(config, num_folds: int, fold: int, pool: str = "train+validation+test") -> dict[str, str]:
  """Split names (train, validation, test) of cross-validation round `fold` (seed 002 §6) on dataset `config`.

  A dataset whose builder stores subject folds as splits (physionet_ct_ich: `fold0` …, named by its module's
  `fold_splits`) uses them; any other is cross-validated over the studies of `pool` (`folds.cv_round`).
  """
  import sys

  fold_splits = getattr(sys.modules[builder_class(config.name).__module__], "fold_splits", None)
  if fold_splits is None:
    return folds.cv_round(pool, num_folds, fold)
  b = builder(config)
  # Before the dataset is built (a stage builds it) its stored folds are not known; open_split checks the names.
  stored = sum(1 for s in b.info.splits if s.startswith("fold")) if b.is_prepared() else num_folds
  if stored != num_folds:
    raise ValueError(f"dataset {config.name}/{config.config} stores {stored} folds, but experiment.cv.num_folds="
                     f"{num_folds}: set it to {stored}")
  return fold_splits(fold, num_folds)
