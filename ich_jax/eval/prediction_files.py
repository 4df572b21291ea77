"""Prediction files: the predictions CSV (and a run's predictions.npz) read and written, labels joined on ids.

Predictions CSV, one row per slice (`launch.py` writes `<workdir>/predictions.csv`):

  column                                   meaning
  study_id, series_id, slice_index         the slice; unique together. Scan level groups by study_id.
  prob_any, prob_epidural, ..., prob_subdural
                                           probabilities in [0, 1], in ich_jax.LABELS order
  any, epidural, ..., subdural             optional 0/1 labels (else give a labels CSV)
  study_blood_ml                           optional: the study's blood volume in mL (seed 001's size bins)
  mimic                                    optional 0/1: the slice holds a hemorrhage mimic
  baseline_bright_fraction                 optional: the no-learning baseline's score (ich_jax.eval.baseline)

Labels CSV: study_id, series_id, slice_index and the six label columns (any,
epidural, ...), optionally study_blood_ml and mimic; joined to the predictions
on the three id columns, and it replaces label columns the predictions carry.
Every prediction needs a label row and every label row a prediction. A
second predictions CSV (`--compare`) with the same ids is compared with
DeLong's test. `predictions.npz` from a run is read as well; it also holds the
reference masks (`mask`: 0 or the LABELS index of the subtype, per pixel, with
`pixel_spacing`, `z_position`, `slice_thickness`), which enable the volume
section; a `pred_mask` entry of the same shape (non-zero = blood) adds Dice and
predicted volumes.
"""
from __future__ import annotations

import csv
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, atomic
from ich_jax.eval import metrics as M

ID_COLUMNS = ("study_id", "series_id", "slice_index")
PROB_COLUMNS = tuple(f"prob_{name}" for name in LABELS)
LABEL_COLUMNS = LABELS
BASELINE_COLUMN = "baseline_bright_fraction"


def _read_csv_columns(path: pathlib.Path) -> dict[str, list[str]]:
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise ValueError(f"{path}: empty file, expected a header row")
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
      raise ValueError(f"{path}: column(s) {dup} appear more than once in the header")
    rows = list(reader)
  for i, row in enumerate(rows):
    if len(row) != len(header):
      raise ValueError(f"{path}: line {i + 2} has {len(row)} fields, the header {len(header)}")
  if not rows:
    raise ValueError(f"{path}: no data rows")
  return {h: [r[j] for r in rows] for j, h in enumerate(header)}


def _floats(path, column: str, values: list[str]) -> np.ndarray:
  try:
    out = np.array(values, dtype=np.float64)
  except ValueError:
    for i, v in enumerate(values):
      try:
        float(v)
      except ValueError:
        raise ValueError(f"{path}: column {column!r} line {i + 2}: {v!r} is not a number") from None
    raise
  bad = ~np.isfinite(out)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{path}: column {column!r} line {i + 2}: {values[i]!r} is not finite "
                     f"({int(bad.sum())} such row(s))")
  return out


def _check_range(path, column: str, values: np.ndarray, lo: float, hi: float, what: str):
  bad = (values < lo) | (values > hi)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{path}: column {column!r} line {i + 2}: {float(values[i])} is not {what} "
                     f"({int(bad.sum())} such row(s))")


def _binary(path, column: str, values: list[str]) -> np.ndarray:
  out = _floats(path, column, values)
  bad = (out != 0) & (out != 1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{path}: column {column!r} line {i + 2}: {values[i]!r} is not 0 or 1")
  return out


def _parse_ids(path, cols: Mapping[str, list[str]], need: Sequence[str]) -> dict[str, np.ndarray]:
  missing = [c for c in (*ID_COLUMNS, *need) if c not in cols]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; found {list(cols)}")
  out = {"study_id": np.array(cols["study_id"], dtype=str), "series_id": np.array(cols["series_id"], dtype=str)}
  idx = _floats(path, "slice_index", cols["slice_index"])
  if (idx != np.round(idx)).any():
    i = int(np.flatnonzero(idx != np.round(idx))[0])
    raise ValueError(f"{path}: column 'slice_index' line {i + 2}: {cols['slice_index'][i]!r} is not an integer")
  out["slice_index"] = idx.astype(np.int64)
  return out


def _parse_labels_and_extras(path, cols, out: dict, *, labels_required: bool):
  if all(c in cols for c in LABEL_COLUMNS):
    out["labels"] = np.stack([_binary(path, c, cols[c]) for c in LABEL_COLUMNS], 1).astype(np.float32)
  elif labels_required or any(c in cols for c in LABEL_COLUMNS):
    raise ValueError(f"{path}: label columns {[c for c in LABEL_COLUMNS if c not in cols]} missing "
                     f"(all six of {list(LABEL_COLUMNS)} or none)")
  if "study_blood_ml" in cols:
    ml = _floats(path, "study_blood_ml", cols["study_blood_ml"])
    _check_range(path, "study_blood_ml", ml, 0, np.inf, "a volume >= 0")
    out["study_blood_ml"] = ml
  if "mimic" in cols:
    out["mimic"] = _binary(path, "mimic", cols["mimic"]).astype(np.uint8)


def read_predictions(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A predictions CSV (format in the module docstring) or a run's predictions.npz, as arrays."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    with np.load(path) as z:
      preds = {k: z[k] for k in z.files}
    missing = [k for k in ("study_id", "probabilities") if k not in preds]
    if missing:
      raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(preds)}")
    prob = M.check_scores(preds["probabilities"], f"{path} probabilities")
    bad = (prob < 0) | (prob > 1)
    if bad.any():
      row, col = np.argwhere(bad)[0]
      raise ValueError(f"{path}: probabilities[{row}, {col}] ({LABELS[col]}) = {prob[row, col]} is not in [0, 1]")
    return preds
  cols = _read_csv_columns(path)
  out = _parse_ids(path, cols, PROB_COLUMNS)
  probs = []
  for c in PROB_COLUMNS:
    p = _floats(path, c, cols[c])
    _check_range(path, c, p, 0, 1, "a probability in [0, 1]")
    probs.append(p)
  out["probabilities"] = np.stack(probs, 1)
  _parse_labels_and_extras(path, cols, out, labels_required=False)
  if BASELINE_COLUMN in cols:
    out[BASELINE_COLUMN] = _floats(path, BASELINE_COLUMN, cols[BASELINE_COLUMN])
  _row_keys(out, path)  # rejects duplicate ids early
  return out


def read_labels(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A labels CSV: the id columns, the six label columns, optionally study_blood_ml and mimic."""
  path = pathlib.Path(path)
  cols = _read_csv_columns(path)
  out = _parse_ids(path, cols, LABEL_COLUMNS)
  _parse_labels_and_extras(path, cols, out, labels_required=True)
  _row_keys(out, path)
  return out


def _row_keys(d: Mapping[str, np.ndarray], source) -> np.ndarray:
  keys = np.array([f"{a}\x1f{b}\x1f{c}" for a, b, c in zip(d["study_id"], d["series_id"], d["slice_index"])])
  uniq, counts = np.unique(keys, return_counts=True)
  if (counts > 1).any():
    study, series, sl = uniq[np.argmax(counts > 1)].split("\x1f")
    raise ValueError(f"{source}: slice study_id={study!r} series_id={series!r} slice_index={sl} appears "
                     f"{counts.max()} times; ids must be unique")
  return keys


def _match_rows(keys: np.ndarray, other_keys: np.ndarray, what: str, other: str) -> np.ndarray:
  """Index into `other_keys` of every key; the two (unique) key sets must be equal."""
  order = np.argsort(other_keys, kind="stable")
  ordered = other_keys[order]
  pos = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
  found = ordered[pos] == keys
  if not found.all():
    study, series, sl = keys[np.argmin(found)].split("\x1f")
    raise ValueError(f"{int((~found).sum())} row(s) of {what} have no row in {other}, first study_id={study!r} "
                     f"series_id={series!r} slice_index={sl}")
  if len(other_keys) != len(keys):
    extra = np.setdiff1d(other_keys, keys)
    study, series, sl = extra[0].split("\x1f")
    raise ValueError(f"{len(extra)} row(s) of {other} have no row in {what}, first study_id={study!r} "
                     f"series_id={series!r} slice_index={sl}")
  return order[pos]


def attach_labels(preds: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], *,
                  names=("predictions", "labels")) -> dict[str, np.ndarray]:
  """`preds` with labels (and study_blood_ml, mimic when given) taken from `labels`, matched on ids."""
  rows = _match_rows(_row_keys(preds, names[0]), _row_keys(labels, names[1]), *names)
  out = dict(preds)
  for k in ("labels", "study_blood_ml", "mimic"):
    if k in labels:
      out[k] = np.asarray(labels[k])[rows]
  return out


def align(preds: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], *,
          names=("predictions", "compare")) -> dict[str, np.ndarray]:
  """`other`'s rows reordered to `preds`' row order (the same slices, matched on ids)."""
  rows = _match_rows(_row_keys(preds, names[0]), _row_keys(other, names[1]), *names)
  return {k: (np.asarray(v)[rows] if np.ndim(v) and len(v) == len(rows) else v) for k, v in other.items()}


def write_predictions_csv(preds: Mapping[str, np.ndarray], path: str | pathlib.Path, *,
                          extra_columns: Sequence[str] = ()) -> pathlib.Path:
  """Writes the predictions CSV `read_predictions` reads (labels and extras included when present).

  `extra_columns`: further keys of `preds` written after the ids (e.g. a
  prediction's `sop_uid`, `z_position`); readers ignore columns they do not know.
  """
  path = pathlib.Path(path)
  n = len(preds["probabilities"])
  columns: list[tuple[str, np.ndarray, str]] = [
      ("study_id", np.asarray(preds["study_id"]).astype(str), "s"),
      ("series_id", np.asarray(preds.get("series_id", preds["study_id"])).astype(str), "s"),
      ("slice_index", np.asarray(preds.get("slice_index", np.arange(n))).astype(np.int64), "d")]
  for key in extra_columns:
    values = np.asarray(preds[key])
    kind = values.dtype.kind
    columns.append((key, values.astype(np.int64) if kind in "iub" else values.astype(np.float64) if kind == "f"
                    else values.astype(str), "d" if kind in "iub" else "r" if kind == "f" else "s"))
  # repr() of the float64 value reads back to the same double (a float32's 9
  # digits would not), so metrics from the CSV equal the run's to the last bit.
  prob = np.asarray(preds["probabilities"], np.float64)
  columns += [(c, prob[:, j], "r") for j, c in enumerate(PROB_COLUMNS)]
  if "labels" in preds:
    lab = np.asarray(preds["labels"]) > 0.5
    columns += [(c, lab[:, j].astype(int), "d") for j, c in enumerate(LABEL_COLUMNS)]
  for key, fmt in (("study_blood_ml", "r"), ("mimic", "d"), (BASELINE_COLUMN, "r")):
    if key in preds:
      values = np.asarray(preds[key])
      columns.append((key, values.astype(int) if fmt == "d" else values.astype(np.float64), fmt))
  with atomic.open_write(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([c for c, _, _ in columns])
    cols = [[repr(v) if fmt == "r" else format(v, fmt) for v in values.tolist()] for _, values, fmt in columns]
    w.writerows(zip(*cols))
  return path

