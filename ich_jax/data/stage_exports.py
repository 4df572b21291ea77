"""Whole series as examples for the sequence models: the stage-1 export and a grain source over it.

Seed 003 (RSNA 2019 1st place, Fig. 1 and §2 "System design") runs its 2D CNN
once per slice and hands the per-slice feature vectors and predictions of a
whole scan to two sequence models. The CNN outputs are written once
(`python launch.py --config C --workdir W --mode export_features`, see
`ich_jax.train.export`), so training the sequence models never reruns a CNN.

Export format: one folder per split (or fold), `<workdir>/export/<split>/`,
holding .npy files and meta.json. Each array is its own .npy, so readers
memory-map it: RSNA's ~675k training slices at 2048 features are 5.5 GB per
backbone, read by every grain worker through one page cache rather than copied
into each. Rows are slices; a series' slices are contiguous and sorted by
z_position (then slice_index); series are sorted by series_id.

  file               shape, dtype       meaning
  features.npy       [N, F] float32     pooled features of the last feature map, `pooled(features_map(x))`;
                                        absent when the exporting model has none (a sequence model)
  probabilities.npy  [N, 6] float32     the model's slice probabilities, ich_jax.LABELS order
  labels.npy         [N, 6] float32     reference slice labels
  z_position.npy     [N] float32        slice position along the scan axis (mm)
  slice_gap.npy      [N] float32        `ich_jax.grid.slice_gaps` of the whole series (mm)
  slice_index.npy    [N] int32          the dataset's slice index; (series_id, slice_index) names a slice
  study_blood_ml.npy, mimic.npy [N]     optional, copied when the dataset has them (report size bins);
  slice_blood_ml.npy [N], study_subtype_ml.npy, slice_subtype_ml.npy [N, 5]   likewise (physionet_ct_ich)
  maps.npy           [N, H, W] float16  optional: a segmentation model's blood-probability map per slice, at
                                        its input size (`config.data.image_size`); the ensemble's input
                                        (ich_jax.data.base_maps). float16, not uint8: a normal slice's score is
                                        its largest pixel, often < 0.05, where 1/255 steps would tie slices
                                        that float16 (~3 significant digits) still ranks
  record_index.npy   [N] int64          the row's record in the exporting run's source: the slice's for a slice
                                        model (ich_jax.data.base_maps joins maps to slices by it, checking the
                                        ids), the series' for a sequence model
  series_id.npy      [R] str
  study_id.npy       [R] str            scan-level metrics group by study
  offsets.npy        [R + 1] int64      series r is rows offsets[r]:offsets[r + 1]
  meta.json                             {"format", "split", "num_series", "num_slices", "feature_dim",
                                         "map_size" ([H, W], or null without maps), "source"}

Memory: the export gathers a split's outputs in host memory before writing
(`loop.predict_split`), maps included — 2·H·W bytes a slice, twice the uint8
`pred_mask` an evaluation gathers; readers memory-map every file.

A sequence model exported the same way (probabilities only) is a further
stage: seed 003's sequence model 2 reads the CNN's and sequence model 1's
predictions. `SeriesFeatureSource` joins several exports of one split slice by
slice (same series and slice_index, checked).

Examples (dict → dict, as the slice pipeline): a series is `features`
[S, K, F] (K exports with features, each zero-padded to the largest F, as the
public code pads its backbones' features), `predictions` [S, N, 6] (all N
exports), `labels`, `z_position`, `gap`, `slice_index`, optional extras, and
per series `series_id`, `study_id`, `record_index`. `fit_length` crops and pads
it to a fixed length L with `slice_valid` [L] True at real slices, which are a
prefix (what the models' padding masks expect).

Training crops a random window of `train_length` consecutive slices (24): seed
003 §2 "Network training procedure" ("random sequence subsampling ... randomly
selects 24 slices from each CT volume"), and its public code
(SequenceModel/seq_dataset.py) takes 24 consecutive slices from a random start
(shorter series whole, zero-padded). A window rather than a random subset
keeps neighbours neighbours, which the GRU and the dilated convolutions model,
and keeps the slice gap an input's true spacing. The public code's two further
augmentations (every other slice of series longer than 10, and reversed order,
each half the time) are not in the paper and not done here.

Evaluation takes whole series, padded to the longest series of the split: one
shape, so one compilation, the same on every process.

Folds by study (seed 003 §2 trains the sequence models with 10-fold
cross-validation): a split name `train[fold=3/10]` selects the series of
studies in fold 3 of 10 of the export's `train` split, `train[fold!=3/10]` all
the others (`ich_jax.data.folds`: studies shuffled with a fixed seed, dealt in turn).
"""
from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Mapping, Sequence

import grain
import ml_collections
import numpy as np

from ich_jax import atomic
from ich_jax.data import folds, streams

FORMAT = 1
EXPORT_DIR = "export"
# Per-slice fields an export is built from (besides the model's outputs).
ID_FIELDS = ("series_id", "study_id", "slice_index", "z_position", "labels")
EXTRA_FIELDS = ("study_blood_ml", "study_subtype_ml", "slice_blood_ml", "slice_subtype_ml", "mimic")
# Per-slice arrays of an example (leading axis: slices); the rest are per series.
SLICE_FIELDS = ("features", "predictions", "labels", "z_position", "gap", "slice_index") + EXTRA_FIELDS


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data` for `config.dataset.kind = "series_features"`."""
  c = ml_collections.ConfigDict()
  c.train_length = 24                  # seed 003 §2 "Network training procedure": 24-slice subsampling
  c.read_threads = 4
  c.prefetch_batches = 4
  c.num_workers = 0
  return c


def export_dir(workdir, split: str) -> pathlib.Path:
  return pathlib.Path(workdir) / EXPORT_DIR / split


_text = folds.as_text


# --- Writing ------------------------------------------------------------------------


def write_export(directory, rows: Mapping[str, np.ndarray], meta: Mapping | None = None) -> pathlib.Path:
  """Writes per-slice `rows` (ID_FIELDS, probabilities, optional features and extras) as an export folder.

  Rows may come in any order; they are grouped by series and sorted by z. The
  folder is written beside its destination and renamed into place, replacing
  an older export only once the new one is complete.
  """
  from ich_jax.grid import slice_gaps  # the sequence models' gap input; JAX, so imported where it is used

  directory = pathlib.Path(directory)
  missing = [k for k in ID_FIELDS + ("probabilities",) if k not in rows]
  if missing:
    raise KeyError(f"export to {directory}: rows lack {missing}; they have {sorted(rows)}")
  series, study = _text(rows["series_id"]), _text(rows["study_id"])
  if not len(series):
    raise ValueError(f"export to {directory}: no slices")
  z = np.asarray(rows["z_position"], np.float32)
  slice_index = np.asarray(rows["slice_index"], np.int32)
  order = np.lexsort((slice_index, z, series))
  series, study, z, slice_index = series[order], study[order], z[order], slice_index[order]
  starts = np.flatnonzero(np.r_[True, series[1:] != series[:-1]])
  offsets = np.r_[starts, len(series)].astype(np.int64)
  same = (series[1:] == series[:-1]) & (slice_index[1:] == slice_index[:-1])
  if same.any():
    i = int(np.flatnonzero(same)[0])
    raise ValueError(f"export to {directory}: series_id={series[i]!r} slice_index={slice_index[i]} appears twice")
  lengths = np.diff(offsets)
  series_of_row = np.repeat(np.arange(len(starts)), lengths)
  bad = study != study[offsets[:-1]][series_of_row]
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"export to {directory}: series_id={series[i]!r} has slices of two studies "
                     f"({study[offsets[series_of_row[i]]]!r} and {study[i]!r})")
  # Gaps of all series in one padded call: [R, longest] z with a mask.
  pos = np.arange(len(series)) - offsets[series_of_row]
  padded_z = np.zeros((len(starts), int(lengths.max())), np.float32)
  padded_z[series_of_row, pos] = z
  valid = np.arange(padded_z.shape[1])[None] < lengths[:, None]
  gaps = np.asarray(slice_gaps(padded_z, valid))[series_of_row, pos].astype(np.float32)

  arrays = {"probabilities": np.asarray(rows["probabilities"], np.float32)[order],
            "labels": np.asarray(rows["labels"], np.float32)[order],
            "z_position": z, "slice_gap": gaps, "slice_index": slice_index,
            "series_id": series[offsets[:-1]], "study_id": study[offsets[:-1]], "offsets": offsets}
  if "features" in rows:
    arrays["features"] = np.asarray(rows["features"], np.float32)[order]
  if "maps" in rows:
    arrays["maps"] = np.asarray(rows["maps"], np.float16)[order]
  if "record_index" in rows:
    arrays["record_index"] = np.asarray(rows["record_index"], np.int64)[order]
  for key in EXTRA_FIELDS:
    if key in rows:
      arrays[key] = np.asarray(rows[key])[order]
  n = len(series)
  for key, ndim in (("probabilities", 2), ("labels", 2), ("features", 2), ("maps", 3), ("record_index", 1)):
    if key in arrays and (arrays[key].ndim != ndim or len(arrays[key]) != n):
      raise ValueError(f"export to {directory}: {key} has shape {arrays[key].shape}, expected {ndim} axes, "
                       f"the first of {n} slices")
  info = {"format": FORMAT, "num_series": len(starts), "num_slices": n,
          "feature_dim": int(arrays["features"].shape[1]) if "features" in arrays else 0,
          "map_size": list(arrays["maps"].shape[1:]) if "maps" in arrays else None, **(meta or {})}

  tmp = atomic.begin(directory, "features")
  for key, value in arrays.items():
    np.save(tmp / f"{key}.npy", value, allow_pickle=False)
  (tmp / "meta.json").write_text(json.dumps(info, indent=2))
  return atomic.commit(tmp, directory)


def read_meta(directory) -> dict:
  path = pathlib.Path(directory) / "meta.json"
  if not path.is_file():
    raise FileNotFoundError(f"no export in {path.parent}: write it with `python launch.py --config <stage-1 config> "
                            f"--workdir <its workdir> --mode export_features`")
  meta = json.loads(path.read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: export format {meta.get('format')!r}; this code reads format {FORMAT}")
  return meta


# --- Reading ------------------------------------------------------------------------

# Per-series arrays of an export; every other .npy has one row per slice.
_SERIES_ARRAYS = ("series_id", "study_id", "offsets")


def read_export(directory) -> dict[str, np.ndarray]:
  """An export folder back as per-slice rows, `write_export`'s input: ids repeated per slice, every .npy.

  `slice_gap` comes along; `write_export` recomputes it from z.

  Arrays are loaded whole (not memory-mapped): for combining exports
  (ich_jax.data.stacking), not for training.
  """
  directory = pathlib.Path(directory)
  read_meta(directory)
  offsets = np.load(directory / "offsets.npy")
  series_of_row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
  rows = {k: np.load(directory / f"{k}.npy")[series_of_row] for k in ("series_id", "study_id")}
  for path in sorted(directory.glob("*.npy")):
    if path.stem not in _SERIES_ARRAYS:
      rows[path.stem] = np.load(path)
  return rows


class SeriesFeatureSource:
  """Random access to the series of one split exported by one or more runs: `len` series, `[i]` → example dict.

  Exports are joined slice by slice: they must hold the same series with the
  same slices (same dataset split). Arrays are memory-mapped on first use in
  each process; pickling (grain workers) carries the paths, not the arrays.
  """

  def __init__(self, workdirs: Sequence, split: str):
    if isinstance(workdirs, (str, pathlib.Path)) or not len(workdirs):
      raise ValueError(f"config dataset.exports={workdirs!r}: expected a non-empty list of exporting workdirs")
    self.split = split
    name, fold = folds.parse_split(split)
    self.dirs = [export_dir(pathlib.Path(w).expanduser().absolute(), name) for w in workdirs]
    self.metas = [read_meta(d) for d in self.dirs]
    first = self.dirs[0]
    offsets = np.load(first / "offsets.npy")
    series_id = np.load(first / "series_id.npy")
    study_id = np.load(first / "study_id.npy")
    slice_index = np.load(first / "slice_index.npy", mmap_mode="r")
    for d in self.dirs[1:]:
      for key, ref in (("series_id", series_id), ("offsets", offsets), ("slice_index", slice_index)):
        if not np.array_equal(np.load(d / f"{key}.npy", mmap_mode="r"), ref):
          raise ValueError(f"exports {first} and {d} differ in {key}: they must cover the same slices "
                           "(export the same dataset split)")
    # The selected series, as rows of the export.
    self.rows = np.arange(len(series_id))
    if fold is not None:
      self.rows = folds.fold_rows(study_id, fold)
    self.series_id, self.study_id = series_id[self.rows], study_id[self.rows]
    self.starts, self.stops = offsets[self.rows], offsets[self.rows + 1]
    self.feature_dims = [m["feature_dim"] for m in self.metas]
    self.extras = [k for k in EXTRA_FIELDS if (first / f"{k}.npy").is_file()]
    self._arrays: dict | None = None

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def __len__(self) -> int:
    return len(self.series_id)

  @property
  def lengths(self) -> np.ndarray:
    return self.stops - self.starts

  @property
  def max_length(self) -> int:
    return int(self.lengths.max()) if len(self) else 0

  @property
  def feature_dim(self) -> int:
    """F of the `features` input: the largest among exports with features (0: none has any)."""
    return max(self.feature_dims)

  @property
  def num_models(self) -> int:
    """N of the `predictions` input: one per export."""
    return len(self.dirs)

  def _load(self) -> dict:
    if self._arrays is None:
      load = lambda d, k: np.load(d / f"{k}.npy", mmap_mode="r")
      first = self.dirs[0]
      self._arrays = {
          "probabilities": [load(d, "probabilities") for d in self.dirs],
          "features": [load(d, "features") for d, f in zip(self.dirs, self.feature_dims) if f],
          **{k: load(first, k) for k in ("labels", "z_position", "slice_gap", "slice_index", *self.extras)}}
    return self._arrays

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    a = self._load()
    lo, hi = int(self.starts[i]), int(self.stops[i])
    out = {"predictions": np.stack([p[lo:hi] for p in a["probabilities"]], axis=1).astype(np.float32),
           "labels": np.asarray(a["labels"][lo:hi], np.float32),
           "z_position": np.asarray(a["z_position"][lo:hi], np.float32),
           "gap": np.asarray(a["slice_gap"][lo:hi], np.float32),
           "slice_index": np.asarray(a["slice_index"][lo:hi], np.int32),
           "series_id": np.str_(self.series_id[i]), "study_id": np.str_(self.study_id[i]),
           "record_index": np.int64(i)}
    for k in self.extras:
      out[k] = np.asarray(a[k][lo:hi])
    if a["features"]:
      feats = np.zeros((hi - lo, len(a["features"]), self.feature_dim), np.float32)
      for j, f in enumerate(a["features"]):
        feats[:, j, :f.shape[1]] = f[lo:hi]
      out["features"] = feats
    return out


# --- Per-example ops ----------------------------------------------------------------


def fit_length(example: dict, length: int, start: int = 0) -> dict:
  """Slices [start, start + length) of the series, zero-padded at the end to `length`, and `slice_valid`."""
  out = dict(example)
  n = len(example["labels"])
  stop = min(n, start + length)
  for key in SLICE_FIELDS:
    if key in example:
      value = np.asarray(example[key])[start:stop]
      padded = np.zeros((length,) + value.shape[1:], value.dtype)
      padded[:len(value)] = value
      out[key] = padded
  out["slice_valid"] = np.arange(length) < stop - start
  return out


def random_window(example: dict, rng: np.random.Generator, *, length: int) -> dict:
  """`length` consecutive slices from a uniform random start (the whole series if shorter)."""
  n = len(example["labels"])
  start = int(rng.integers(0, n - length + 1)) if n > length else 0
  return fit_length(example, length, start)


def explode(records: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Series records → one row per valid slice.

  Fields shaped [R, L, ...] like `slice_valid` [R, L] are per slice; [R] fields
  (series_id, study_id, record_index) are repeated for each of the series'
  valid slices. Rows stay in series order, slices in order.
  """
  valid = np.asarray(records["slice_valid"]).astype(bool)
  counts = valid.sum(axis=1)
  out = {}
  for key, value in records.items():
    if key == "slice_valid":
      continue
    value = np.asarray(value)
    if value.ndim >= 2 and value.shape[:2] == valid.shape:
      out[key] = value[valid]
    elif value.shape[:1] == valid.shape[:1]:
      out[key] = np.repeat(value, counts, axis=0)
    else:
      raise ValueError(f"field {key!r} of shape {value.shape} is neither per series [{valid.shape[0]}] "
                       f"nor per slice {list(valid.shape)}")
  return out


# --- Pipelines ------------------------------------------------------------------------


def train_dataset(source: SeriesFeatureSource, cfg, *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Batches of series cropped to `cfg.train_length` random windows; order and sharding as the slice pipeline."""
  window = functools.partial(random_window, length=int(cfg.train_length))
  return streams.train_batches(
      len(source), lambda ds: ds.map(source.__getitem__).random_map(window, seed=streams.derived_seed(seed, 1)),
      cfg, global_batch_size=global_batch_size, seed=seed, process_index=process_index, process_count=process_count)


def train_iterator(source: SeriesFeatureSource, cfg, **kw) -> grain.DatasetIterator:
  """Infinite batches of this process's share of each global batch; `get_state`/`set_state` resume exactly.

  Same contract as `ich_jax.data.pipeline.train_iterator`, with series for slices.
  """
  return iter(train_dataset(source, cfg, **kw))


def _eval_example(source: SeriesFeatureSource, length: int, index: int) -> dict:
  return fit_length(source[index], length)


def eval_batches(source: SeriesFeatureSource, cfg, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Whole series padded to the split's longest, one pass in series order (`pipeline.eval_batches`' contract)."""
  return streams.sharded_eval_batches(
      len(source), functools.partial(_eval_example, source, source.max_length), cfg, batch_size=batch_size,
      process_index=process_index, process_count=process_count)


# --- The trainer's data interface (ich_jax.train.loop.input_module, kind "series_features") ---


def ensure_ready(dataset_config) -> None:
  """Nothing to build (the exports come from `--mode export_features` runs); checks they are there and agree."""
  open_split(dataset_config, dataset_config.train_split)


def open_split(dataset_config, split: str) -> SeriesFeatureSource:
  """`dataset_config.exports`: the workdirs of the runs whose `export_features` output the model reads."""
  return SeriesFeatureSource(dataset_config.exports, split)


def in_channels(config) -> int:
  """What the sequence model's `in_channels` counts: F of the features, or N stage models.

  Which input the model reads is the task's option (`config.task.inputs`).
  """
  source = open_split(config.dataset, config.dataset.train_split)
  if config.task.get("inputs", "features") == "features":
    if not source.feature_dim:
      raise ValueError(f"config task.inputs='features' but no export in {config.dataset.exports} has features")
    return source.feature_dim
  return source.num_models

