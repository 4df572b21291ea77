"""Combining stage exports (`ich_jax.data.stage_exports` format): out-of-fold assembly and the mean over models.

Seed 003 stacks its stages (Fig. 1): the sequence models learn from the CNN's
per-slice outputs, sequence model 2 also from model 1's. Learning from
in-sample outputs would teach a later stage to trust predictions better than
it will see on new scans, so the training split's export of a K-fold stage is
assembled out of fold: each fold's slices come from the model that did not
train on them (`out_of_fold`). On the held-out split every fold model
predicts, and the stage's output is their mean (`mean_over_models`, as the
public code averages its 10 sequence-model folds, SequenceModel/main.py); the
same mean over backbones is seed 003's final ensemble ("the unweighted average
of probabilities predicted by the three different models", §3).

Features are averaged too, so the next stage sees one feature vector per slice
of the held-out split. The fold models of one backbone start from the same
initialisation and train on overlapping data (K-1 of K folds each); the
public code writes each fold model's test features (2DCNN/src/predict.py)
and feeds its sequence models one test feature set.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax.data import folds, stage_exports

# Per-slice arrays that describe the exporting run rather than the slice: not carried into a combination
# (record_index numbers one run's source; slice_gap is recomputed from z).
_RUN_FIELDS = ("record_index", "slice_gap")
# Model outputs: averaged by `mean_over_models`; every other field must agree across the exports.
_OUTPUTS = ("probabilities", "features", "maps")


def _read(dirs: Sequence) -> list[dict[str, np.ndarray]]:
  if not len(dirs):
    raise ValueError("no exports to combine")
  return [stage_exports.read_export(d) for d in dirs]


def _same_outputs(parts, dirs) -> None:
  for key in _OUTPUTS:
    have = [key in p for p in parts]
    if any(have) and not all(have):
      raise ValueError(f"exports {[str(d) for d, h in zip(dirs, have) if h]} have {key} and "
                       f"{[str(d) for d, h in zip(dirs, have) if not h]} do not: combine exports of one stage")
    if all(have) and len({p[key].shape[1:] for p in parts}) > 1:
      raise ValueError(f"exports {[str(d) for d in dirs]} differ in {key} shape "
                       f"{[p[key].shape[1:] for p in parts]}")


def out_of_fold(fold_dirs: Sequence, out_dir, meta: Mapping | None = None,
                records: tuple[np.ndarray, np.ndarray] | None = None) -> pathlib.Path:
  """One export of a whole split from the exports of its folds `NAME[fold=k/K]`, k = 0 … K-1.

  Each fold export must name its fold in meta.json's "split" (what
  `launch.py --mode export_features` writes); all K folds of one split must
  be there, each once, and no series may appear in two of them.

  `records`: (series_id, slice_index) of the whole split's records, in record
  order. A fold export's record_index numbers the records of its fold, so it
  is dropped; given `records`, the assembled export gets each slice's record
  in the whole split instead (what `ich_jax.data.base_maps` joins maps by),
  and every record must be in exactly one fold.
  """
  parts = _read(fold_dirs)
  splits = [stage_exports.read_meta(d).get("split", "") for d in fold_dirs]
  parsed = [folds.parse_split(s) if folds.is_fold_split(s) else (s, None) for s in splits]
  names = {name for name, _ in parsed}
  held_out = [fold for _, fold in parsed]
  if (len(names) != 1 or any(f is None or not f[0] for f in held_out)
      or sorted(f[1] for f in held_out) != list(range(held_out[0][2])) or len({f[2] for f in held_out}) != 1):
    raise ValueError(f"out-of-fold assembly needs the held-out folds NAME[fold=k/K], k = 0 … K-1, each once; "
                     f"got splits {splits} from {[str(d) for d in fold_dirs]}")
  _same_outputs(parts, fold_dirs)
  owner: dict[str, int] = {}
  for i, p in enumerate(parts):
    for s in np.unique(p["series_id"]):
      if owner.setdefault(str(s), i) != i:
        raise ValueError(f"series_id={s!r} is in two fold exports, {fold_dirs[owner[str(s)]]} and {fold_dirs[i]}")
  keys = [k for k in parts[0] if k not in _RUN_FIELDS and all(k in p for p in parts)]
  rows = {k: np.concatenate([p[k] for p in parts]) for k in keys}
  name = names.pop()
  if records is not None:
    rows["record_index"] = _record_index(rows, records, f"out-of-fold assembly of {name!r} from "
                                                         f"{[str(d) for d in fold_dirs]}")
  return stage_exports.write_export(out_dir, rows, {"split": name, "combined": "out_of_fold",
                                                    "parts": [str(pathlib.Path(d).absolute()) for d in fold_dirs],
                                                    **(meta or {})})


def _record_index(rows: Mapping[str, np.ndarray], records, what: str) -> np.ndarray:
  """Each row's record among `records` (series_id, slice_index), checking that the rows are those records."""
  series, index = folds.as_text(records[0]), np.asarray(records[1], np.int64).reshape(-1)
  record_of = {(s, int(i)): r for r, (s, i) in enumerate(zip(series, index))}
  if len(record_of) != len(series):
    raise ValueError(f"{what}: the split's records repeat a (series_id, slice_index)")
  keys = list(zip(folds.as_text(rows["series_id"]), np.asarray(rows["slice_index"], np.int64).tolist()))
  missing = [k for k in keys if k not in record_of]
  if missing or len(keys) != len(record_of):
    raise ValueError(f"{what}: the folds hold {len(keys)} slices, the split {len(record_of)} records"
                     + (f"; series_id={missing[0][0]!r} slice_index={missing[0][1]} is not in the split"
                        if missing else "") + ": export the folds of this split of this dataset build")
  return np.asarray([record_of[k] for k in keys], np.int64)


def mean_over_models(dirs: Sequence, out_dir, meta: Mapping | None = None) -> pathlib.Path:
  """One export whose outputs (probabilities, features, maps) are the mean over exports of the same slices.

  The exports must hold the same slices with the same labels: the same
  series, slice indices and z positions (write_export's order makes equal
  sets line up row by row).
  """
  parts = _read(dirs)
  _same_outputs(parts, dirs)
  first = parts[0]
  for d, p in zip(dirs[1:], parts[1:]):
    for key in ("series_id", "slice_index", "z_position", "labels"):
      a, b = np.asarray(first[key]), np.asarray(p[key])
      if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
        raise ValueError(f"exports {dirs[0]} and {d} differ in {key}: average exports of the same split")
  rows = {k: v for k, v in first.items() if k not in _RUN_FIELDS}
  for key in _OUTPUTS:
    if key in first:
      total = np.zeros(first[key].shape, np.float64)  # one accumulator: RSNA features are GBs per model
      for p in parts:
        total += p[key]
      rows[key] = (total / len(parts)).astype(np.float32)
  return stage_exports.write_export(out_dir, rows, {"split": stage_exports.read_meta(dirs[0]).get("split"),
                                                    "combined": "mean_over_models",
                                                    "parts": [str(pathlib.Path(d).absolute()) for d in dirs],
                                                    **(meta or {})})


def evaluation_rows(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An export's rows as predictions for `ich_jax.eval.report` (without the features and maps)."""
  return {k: v for k, v in rows.items() if k not in _OUTPUTS[1:] + _RUN_FIELDS}
