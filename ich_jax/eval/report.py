"""Evaluation reports: predictions in; metrics.json, report.md, PNG figures and a printed table out.

Used by `launch.py --mode eval` (and after training) on the model's own
predictions, and by `python -m ich_jax.eval` on exported prediction files, so
any run, or any other system's CSV, gets the same tables.

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

Statistics: AUC 95% intervals are percentile bootstraps (seed 000 §2.1.5: 500
replications, stratified by class); at the slice level whole studies are
resampled, since slices of one scan are not independent. DeLong p-values are
two-sided; at the slice level they treat slices as independent, so the scan
level is the one to quote.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, SUBTYPES, atomic
from ich_jax.eval import metrics as M

ID_COLUMNS = ("study_id", "series_id", "slice_index")
PROB_COLUMNS = tuple(f"prob_{name}" for name in LABELS)
LABEL_COLUMNS = LABELS
BASELINE_COLUMN = "baseline_bright_fraction"
# Seed 002, Table 6: slice-level sensitivity/specificity/accuracy at thresholds 0.5–0.9.
SWEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Seed 000 §2.3: "difficult-for-AI" cases, positives at p <= 0.6 and negatives at p >= 0.4.
DIFFICULT_POS_MAX, DIFFICULT_NEG_MIN = 0.6, 0.4
_INTRAPARENCHYMAL = LABELS.index("intraparenchymal")


# --- Prediction files -------------------------------------------------------------------


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
    prob = M._check_scores(preds["probabilities"], f"{path} probabilities")
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


# --- Classification ---------------------------------------------------------------------


def _labels(preds: Mapping[str, np.ndarray]) -> np.ndarray:
  if "labels" not in preds:
    raise ValueError("the predictions have no labels: add the label columns "
                     f"{list(LABEL_COLUMNS)} or pass a labels CSV (--labels)")
  return np.asarray(preds["labels"]) > 0.5


def _scan(values: np.ndarray, study_ids: np.ndarray) -> np.ndarray:
  return M.scan_scores(values, study_ids, reduce="max")[1]


def _class_entry(y, p, threshold, *, n_boot, seed, alpha, groups=None) -> dict:
  stats = M.binary_stats(y, p, threshold)
  auc, lo, hi = (M.bootstrap_ci(M.roc_auc, y, p, n_boot=n_boot, alpha=alpha, seed=seed, groups=groups)
                 if n_boot else (M.roc_auc(y, p), math.nan, math.nan))
  _, dlo, dhi = M.delong_ci(y, p, alpha=alpha)
  return {"auc": auc, "auc_ci": [lo, hi], "auc_ci_delong": [dlo, dhi], **stats,
          "n_positive": int(y.sum()), "n_negative": int((~y).sum())}


def _strata(y: np.ndarray, p: np.ndarray, ml: np.ndarray | None, threshold: float) -> dict:
  """Seed 001 Table 2: per class and size bin, positives of the row against all hemorrhage-free cases.

  Bins use the study's total blood volume (the predictions carry no per-subtype volume).
  """
  healthy = ~y[:, 0]
  bins = M.size_bin(ml) if ml is not None else None
  out = {}
  for c, name in enumerate(LABELS):
    rows = {"all": y[:, c]}
    if bins is not None:
      rows.update({b: y[:, c] & (bins == b) for b in M.SIZE_BINS})
    out[name] = {}
    for row, pos in rows.items():
      keep = pos | healthy
      yk, pk = pos[keep], p[keep, c]
      st = M.binary_stats(yk, pk, threshold)
      out[name][row] = {"n_positive": int(pos.sum()), "n_negative": int(healthy.sum()), "auc": M.roc_auc(yk, pk),
                        **{k: st[k] for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")}}
  return out


def _sweep(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> list[dict]:
  out = []
  for t in thresholds:
    st = M.binary_stats(y, p, t)
    out.append({"threshold": float(t), **{k: st[k] for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv")}})
  return out


def classification_metrics(preds: Mapping[str, np.ndarray], *, threshold: float = 0.5,
                           baseline: np.ndarray | None = None, compare: Mapping[str, np.ndarray] | None = None,
                           names: Sequence[str] = ("model", "compare"), n_boot: int = 500, seed: int = 0,
                           alpha: float = 0.05, sweep: Sequence[float] = SWEEP_THRESHOLDS) -> dict:
  """Metrics of per-slice probabilities [N, 6] against labels [N, 6].

  Scan level: a study's probability (and label) is the max over its slices
  (seed 003 and seed 000). Size bins use the study's total blood volume (seed
  001's bins): AUC(any) of the positives in one bin against all negatives.
  `baseline` (default: the predictions' baseline_bright_fraction column) is a
  second score reported beside the model; `compare` is a second prediction set
  on the same rows (see `align`), tested against this one with DeLong's test.
  """
  prob = M._check_scores(preds["probabilities"], "probabilities")
  labels = _labels(preds)
  if prob.shape != labels.shape or prob.shape[1:] != (len(LABELS),):
    raise ValueError(f"probabilities {prob.shape} and labels {labels.shape} must both be [N, {len(LABELS)}]")
  study = np.asarray(preds["study_id"])
  scan_prob, scan_labels = _scan(prob, study), _scan(labels, study) > 0.5
  ml = np.asarray(preds["study_blood_ml"], np.float64) if "study_blood_ml" in preds else None
  scan_ml = _scan(ml, study) if ml is not None else None
  out: dict = {"n_slices": len(prob), "n_scans": len(scan_prob),
               "n_positive_slices": int(labels[:, 0].sum()), "n_positive_scans": int(scan_labels[:, 0].sum()),
               "threshold": threshold, "slice": {}, "scan": {},
               "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "alpha": alpha, "stratified": True,
                             "slice_resampling_unit": "study", "scan_resampling_unit": "study"}}
  levels = {"slice": (labels, prob, ml, study), "scan": (scan_labels, scan_prob, scan_ml, None)}
  for level, (y, p, vol, groups) in levels.items():
    for c, name in enumerate(LABELS):
      out[level][name] = _class_entry(y[:, c], p[:, c], threshold, n_boot=n_boot, seed=seed, alpha=alpha,
                                      groups=groups)
    out[level]["weighted_log_loss"] = M.weighted_log_loss(y, p)
  out["strata"] = {level: _strata(y, p, vol, threshold) for level, (y, p, vol, _) in levels.items()}
  if ml is not None:
    out["size_bins_any"] = {b: {level: {k: out["strata"][level]["any"][b][k] for k in ("auc", "n_positive")}
                                for level in levels} for b in M.SIZE_BINS}
  out["threshold_sweep_any"] = {level: _sweep(y[:, 0], p[:, 0], sweep) for level, (y, p, _, _) in levels.items()}

  hard = M.difficult_cases(scan_labels[:, 0], scan_prob[:, 0], DIFFICULT_POS_MAX, DIFFICULT_NEG_MIN)
  out["difficult_scans"] = {"pos_max": DIFFICULT_POS_MAX, "neg_min": DIFFICULT_NEG_MIN, "n": int(hard.sum()),
                            "n_positive": int((hard & scan_labels[:, 0]).sum()),
                            "n_negative": int((hard & ~scan_labels[:, 0]).sum())}

  if "mimic" in preds:
    mimic_neg = (np.asarray(preds["mimic"]) > 0) & ~labels[:, 0]
    out["mimic_negative_slices"] = {
        "n": int(mimic_neg.sum()),
        "false_positive_rate": float((prob[mimic_neg, 0] >= threshold).mean()) if mimic_neg.any() else float("nan")}
  if baseline is None and BASELINE_COLUMN in preds:
    baseline = preds[BASELINE_COLUMN]
  if baseline is not None:
    base = M._check_scores(baseline, "baseline")
    out["baseline_bright_fraction"] = {"slice_auc_any": M.roc_auc(labels[:, 0], base),
                                       "scan_auc_any": M.roc_auc(scan_labels[:, 0], _scan(base, study))}
  if compare is not None:
    other = M._check_scores(compare["probabilities"], f"{names[1]} probabilities")
    if other.shape != prob.shape:
      raise ValueError(f"{names[1]} probabilities {other.shape} != {names[0]} probabilities {prob.shape}")
    scan_other = _scan(other, study)
    cmp = {"name_a": names[0], "name_b": names[1], "slice": {}, "scan": {}}
    for level, (y, p, q) in {"slice": (labels, prob, other), "scan": (scan_labels, scan_prob, scan_other)}.items():
      for c, name in enumerate(LABELS):
        cmp[level][name] = M.delong_test(y[:, c], p[:, c], q[:, c])
    out["comparison"] = cmp
  return out


# --- Volumes and segmentation --------------------------------------------------------


def _series_spacing(preds, rows: np.ndarray) -> tuple[float, float, float]:
  """(slice gap, row, col) in mm: the gap from z positions, else the slice thickness."""
  dz = math.nan
  if "z_position" in preds and len(rows) > 1:
    z = np.sort(np.asarray(preds["z_position"], np.float64)[rows])
    dz = float(np.median(np.diff(z)))
  if not dz > 0:
    if "slice_thickness" not in preds:
      raise ValueError(f"series {preds.get('series_id', preds['study_id'])[rows[0]]!r}: no slice gap; the "
                       "predictions need z_position (two or more slices) or slice_thickness for volumes")
    dz = float(np.median(np.asarray(preds["slice_thickness"], np.float64)[rows]))
  dy, dx = np.median(np.asarray(preds["pixel_spacing"], np.float64)[rows], axis=0)
  return dz, float(dy), float(dx)


def series_volumes(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  """Per series with blood in the reference mask: reference, ABC/2 and predicted volumes (mL), Dice.

  None when the predictions carry no reference masks. The reference is the
  labelled mask's voxel volume (seed 001 compares with manual segmentations).
  ABC/2 is measured on the reference mask, as a clinician would on the scan;
  the intraparenchymal column applies it to the intraparenchymal label alone,
  the comparison seed 001 reports (Pearson 0.954 against the CNN's 0.999).
  """
  if "mask" not in preds or "pixel_spacing" not in preds:
    return None
  masks = np.asarray(preds["mask"])
  pred_masks = np.asarray(preds["pred_mask"]) if "pred_mask" in preds else None
  if pred_masks is not None and pred_masks.shape != masks.shape:
    raise ValueError(f"pred_mask shape {pred_masks.shape} != mask shape {masks.shape}")
  series = np.asarray(preds.get("series_id", preds["study_id"]))
  order_key = np.asarray(preds.get("slice_index", preds.get("z_position", np.arange(len(series)))))
  ids, inverse = np.unique(series, return_inverse=True)
  rows_of = np.split(np.lexsort((order_key, inverse)), np.cumsum(np.bincount(inverse))[:-1])
  table: dict[str, list] = {k: [] for k in ("series_id", "reference_ml", "abc2_ml", "iph_reference_ml", "iph_abc2_ml",
                                            "predicted_ml", "dice", "subtypes")}
  for sid, rows in zip(ids, rows_of):
    ref = masks[rows]
    if not ref.any():
      continue
    spacing = _series_spacing(preds, rows)
    iph = ref == _INTRAPARENCHYMAL
    table["series_id"].append(str(sid))
    table["reference_ml"].append(M.volume_ml(ref, spacing))
    table["abc2_ml"].append(M.abc2_ml(ref, spacing))
    table["iph_reference_ml"].append(M.volume_ml(iph, spacing))
    table["iph_abc2_ml"].append(M.abc2_ml(iph, spacing))
    table["subtypes"].append(" ".join(LABELS[int(k)] for k in np.unique(ref) if k))
    if pred_masks is not None:
      table["predicted_ml"].append(M.volume_ml(pred_masks[rows], spacing))
      table["dice"].append(M.dice(pred_masks[rows], ref))
  if pred_masks is None:
    del table["predicted_ml"], table["dice"]
  return {k: np.array(v, dtype=str if k in ("series_id", "subtypes") else np.float64) for k, v in table.items()}


def _agreement(reference: np.ndarray, estimate: np.ndarray) -> dict:
  err = estimate - reference
  return {"n": int(reference.size), "pearson_r": M.pearson_r(estimate, reference) if reference.size else math.nan,
          "mean_error_ml": float(err.mean()) if err.size else math.nan,
          "mean_relative_error": float((err / reference).mean()) if err.size else math.nan,
          "mean_abs_error_ml": float(np.abs(err).mean()) if err.size else math.nan}


def volume_metrics(preds: Mapping[str, np.ndarray]) -> dict | None:
  """Volume agreement (Pearson r, mean signed error) and Dice per subtype; None without masks.

  Dice per subtype averages the 3D Dice of blood (any label) over the series
  that contain the subtype, as seed 001's per-type rows; slice Dice scores
  only slices with reference blood (seed 002), pooled over the split.
  """
  table = series_volumes(preds)
  if table is None:
    return None
  ref = table["reference_ml"]
  iph = table["iph_reference_ml"] > 0
  out = {"n_series_with_blood": int(ref.size), "reference": "labelled mask voxels",
         "abc2": _agreement(ref, table["abc2_ml"]),
         "abc2_intraparenchymal": _agreement(table["iph_reference_ml"][iph], table["iph_abc2_ml"][iph])}
  if "predicted_ml" in table:
    out["predicted"] = _agreement(ref, table["predicted_ml"])
    dice = {"any": {"n_series": int(ref.size), "dice": float(np.nanmean(table["dice"])) if ref.size else math.nan}}
    for name in SUBTYPES:
      has = np.array([name in s.split() for s in table["subtypes"]], bool)
      dice[name] = {"n_series": int(has.sum()), "dice": float(np.nanmean(table["dice"][has])) if has.any() else math.nan}
    # Seed 002 scores slices with reference blood only: Dice's empty=NaN drops slices where both masks are
    # empty, but a false positive on a blood-free slice would still score 0, so select the slices first.
    ref_all = np.asarray(preds["mask"])
    blood = ref_all.reshape(len(ref_all), -1).any(1)
    pred_b, ref_b = np.asarray(preds["pred_mask"])[blood], ref_all[blood]
    per_slice = M.dice(pred_b, ref_b, axis=(1, 2))
    dice["slices_with_blood"] = {"n_slices": int(blood.sum()),
                                 "dice": float(per_slice.mean()) if blood.any() else math.nan,
                                 "jaccard": float(M.jaccard(pred_b, ref_b, axis=(1, 2)).mean())
                                 if blood.any() else math.nan}
    out["dice"] = dice
  return out


def overlap_summary(pred: np.ndarray, ref: np.ndarray) -> dict:
  """Dice and Jaccard per slice [N, H, W] over the slices whose reference is not empty (seed 002 scores only
  those): mean, min, max and standard deviation, and the count."""
  pred, ref = np.asarray(pred), np.asarray(ref)
  scored = ref.reshape(len(ref), -1).any(1)
  out = {"n_slices": int(scored.sum())}
  for name, fn in (("dice", M.dice), ("jaccard", M.jaccard)):
    v = fn(pred[scored], ref[scored], axis=(1, 2)) if scored.any() else np.zeros(0)
    out[name] = {k: (float(f(v)) if v.size else math.nan)
                 for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max), ("std", np.std))}
  return out


def mask_agreement(preds: Mapping[str, np.ndarray], key: str) -> dict:
  """`pred_mask` against the reference map `preds[key]` (e.g. a skull-stripping model's brain masks)."""
  if key not in preds or "pred_mask" not in preds:
    raise ValueError(f"mask agreement needs predictions with 'pred_mask' and {key!r}; have {sorted(preds)}")
  return {"reference": key, "n_slices_total": len(preds[key]), **overlap_summary(preds["pred_mask"], preds[key])}


def format_mask_agreement(m: Mapping, *, title: str = "Mask agreement") -> str:
  rows = [[name, _f3(m[name]["mean"]), _f3(m[name]["min"]), _f3(m[name]["max"]), _f3(m[name]["std"])]
          for name in ("dice", "jaccard")]
  return "\n".join([f"# {title}", "", (f"Predicted masks against `{m['reference']}` on the {m['n_slices']} of "
                    f"{m['n_slices_total']} slices where it is not empty."), ""]
                   + _md_table(["", "Mean", "Min", "Max", "SD"], rows) + [""])


# --- Text --------------------------------------------------------------------------------


def _nan(x) -> bool:
  return x is None or (isinstance(x, float) and math.isnan(x))


def _fmt(x) -> str:
  return "   n/a" if _nan(x) else f"{x:6.3f}"


def format_table(m: Mapping) -> str:
  """The short table printed after an evaluation."""
  lines = [(f"Held-out: {m['n_slices']} slices ({m['n_positive_slices']} with blood), "
           f"{m['n_scans']} scans ({m['n_positive_scans']} with blood); threshold {m['threshold']}"),
           "", f"{'class':<18} {'slice AUC':>9} {'sens':>6} {'spec':>6} | {'scan AUC':>8} {'sens':>6} {'spec':>6}"]
  for name in LABELS:
    s, c = m["slice"][name], m["scan"][name]
    lines.append(f"{name:<18} {_fmt(s['auc']):>9} {_fmt(s['sensitivity'])} {_fmt(s['specificity'])} | "
                 f"{_fmt(c['auc']):>8} {_fmt(c['sensitivity'])} {_fmt(c['specificity'])}")
  lines.append(f"{'weighted log-loss':<18} {_fmt(m['slice']['weighted_log_loss']):>9} {'':>13} | "
               f"{_fmt(m['scan']['weighted_log_loss']):>8}")
  if "size_bins_any" in m:
    lines += ["", "AUC(any) by study blood volume (positives in the bin vs all negatives):"]
    for name, entry in m["size_bins_any"].items():
      lines.append(f"  {name:<9} slice {_fmt(entry['slice']['auc'])} (n+={entry['slice']['n_positive']:4d})   "
                   f"scan {_fmt(entry['scan']['auc'])} (n+={entry['scan']['n_positive']:3d})")
  return "\n".join(lines + _other_lines(m, _fmt))


def _other_lines(m: Mapping, fmt) -> list[str]:
  """Mimic false positives and the no-learning baseline, one sentence each."""
  out = []
  if "mimic_negative_slices" in m:
    mm = m["mimic_negative_slices"]
    out.append(f"Negative slices with mimics: {mm['n']}, false-positive rate {fmt(mm['false_positive_rate'])}")
  if "baseline_bright_fraction" in m:
    b = m["baseline_bright_fraction"]
    out.append(f"No-learning baseline (fraction of intracranial pixels at 50–90 HU): "
               f"slice AUC(any) {fmt(b['slice_auc_any'])}, scan AUC(any) {fmt(b['scan_auc_any'])}")
  return out


def _f3(x) -> str:
  return "NA" if _nan(x) else f"{x:.3f}"


def _pct(x) -> str:
  return "NA" if _nan(x) else f"{100 * x:.1f}"


def _auc_ci(e: Mapping) -> str:
  lo, hi = e.get("auc_ci", (None, None))
  if _nan(e["auc"]):
    return "NA"
  return f"{e['auc']:.3f}" if _nan(lo) else f"{e['auc']:.3f} [{lo:.3f}–{hi:.3f}]"


def _p(p) -> str:
  if _nan(p):
    return "NA"
  return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
          + ["| " + " | ".join(r) + " |" for r in rows])


def format_markdown(m: Mapping, *, title: str = "Evaluation report", figures: Sequence[str] = ()) -> str:
  """report.md: the papers' tables for one evaluation (see the module docstring for the statistics)."""
  boot = m.get("bootstrap", {})
  lines = [f"# {title}", ""]
  meta = [f"{k}: {m[k]}" for k in ("dataset", "split", "step", "source") if m.get(k) is not None]
  if meta:
    lines += ["; ".join(meta), ""]
  lines += [(f"{m['n_slices']} slices ({m['n_positive_slices']} with blood) in {m['n_scans']} scans "
            f"({m['n_positive_scans']} with blood). A scan's probability and label are the maximum over its slices "
            f"(seeds 000, 003). Operating threshold {m['threshold']}."), ""]
  if boot.get("n_boot"):
    lines += [(f"AUC 95% CI: percentile bootstrap, {boot['n_boot']} replications (seed 000), stratified by class, "
              f"seed {boot['seed']}; slice-level replicates resample whole studies."), ""]
  else:
    lines += ["AUC 95% CI: not computed (n_boot = 0); DeLong intervals are in metrics.json.", ""]

  for level, heading in (("scan", "Scan level"), ("slice", "Slice level")):
    rows = []
    for name in LABELS:
      e = m[level][name]
      rows.append([name, f"{e['n_positive']}/{e['n_negative']}", _auc_ci(e), _f3(e["sensitivity"]),
                   _f3(e["specificity"]), _f3(e["ppv"]), _f3(e["npv"]), _f3(e["accuracy"])])
    lines += [f"## {heading}: detection per class", ""]
    lines += _md_table(["Class", "n+/n−", "AUC [95% CI]", "Sensitivity", "Specificity", "PPV", "NPV", "Accuracy"],
                       rows)
    lines += ["", f"Weighted log-loss (RSNA 2019, any ×2): {_f3(m[level]['weighted_log_loss'])}", ""]

  if "strata" in m:
    for level in ("scan", "slice"):
      lines += [f"## {level.capitalize()} level by hemorrhage type and size", "",
                "Positives of the row against every hemorrhage-free " + level + " (seed 001, Table 2). "
                "Size bins by the study's total blood volume: punctate < 0.01, small 0.01–5, medium 5–25, "
                "large > 25 mL.", ""]
      rows = []
      for name, entry in m["strata"][level].items():
        for row, e in entry.items():
          if row != "all" and e["n_positive"] == 0:
            continue
          rows.append([name if row == "all" else "", "All" if row == "all" else row.capitalize(),
                       str(e["n_positive"]), _f3(e["auc"]), _f3(e["sensitivity"]), _f3(e["specificity"]),
                       _f3(e["ppv"]), _f3(e["npv"]), _f3(e["accuracy"])])
      lines += _md_table(["Hemorrhage", "Size", "n+", "AUC", "Sensitivity", "Specificity", "PPV", "NPV",
                          "Accuracy"], rows) + [""]

  if "threshold_sweep_any" in m:
    lines += ["## Threshold sweep, any hemorrhage", "", "As seed 002, Table 6.", ""]
    for level in ("slice", "scan"):
      rows = [[f"{r['threshold']:.1f}", _pct(r["sensitivity"]), _pct(r["specificity"]), _pct(r["accuracy"]),
               _pct(r["ppv"]), _pct(r["npv"])] for r in m["threshold_sweep_any"][level]]
      lines += [f"{level.capitalize()} level:", ""]
      lines += _md_table(["Threshold", "Sensitivity (%)", "Specificity (%)", "Accuracy (%)", "PPV (%)", "NPV (%)"],
                         rows) + [""]

  if "comparison" in m:
    c = m["comparison"]
    lines += [f"## Comparison: {c['name_a']} vs {c['name_b']} (DeLong test, two-sided)", ""]
    for level in ("scan", "slice"):
      rows = [[name, _f3(e["auc_a"]), _f3(e["auc_b"]),
               "NA" if _nan(e["auc_a"]) else f"{e['auc_a'] - e['auc_b']:+.3f}",
               "NA" if _nan(e["z"]) else f"{e['z']:.2f}", _p(e["p_value"])] for name, e in c[level].items()]
      lines += [f"{level.capitalize()} level:", ""]
      lines += _md_table(["Class", f"AUC {c['name_a']}", f"AUC {c['name_b']}", "Difference", "z", "p"], rows) + [""]
    lines += ["Slice-level p-values treat slices as independent; quote the scan level.", ""]

  if "difficult_scans" in m:
    d = m["difficult_scans"]
    lines += ["## Difficult scans", "",
              (f"Seed 000 §2.3: scans with blood scored ≤ {d['pos_max']} and scans without blood scored ≥ "
              f"{d['neg_min']} (probability of any). {d['n']} scans: {d['n_positive']} with blood, "
              f"{d['n_negative']} without; listed in difficult_scans.csv."), ""]

  v = m.get("volumes")
  if v:
    lines += ["## Volume", "", (f"{v['n_series_with_blood']} series with blood; reference = {v['reference']}. "
              "ABC/2 on the reference mask's largest slice (A, B) and its number of slices with blood (C). "
              "Error = estimate − reference; relative error averaged per series."), ""]
    rows = []
    for key, label in (("abc2", "ABC/2, all blood"), ("abc2_intraparenchymal", "ABC/2, intraparenchymal"),
                       ("predicted", "Predicted mask")):
      if key in v:
        a = v[key]
        rows.append([label, str(a["n"]), _f3(a["pearson_r"]),
                     "NA" if _nan(a["mean_error_ml"]) else f"{a['mean_error_ml']:+.2f}",
                     "NA" if _nan(a["mean_relative_error"]) else f"{100 * a['mean_relative_error']:+.1f}",
                     "NA" if _nan(a["mean_abs_error_ml"]) else f"{a['mean_abs_error_ml']:.2f}"])
    lines += _md_table(["Estimate", "Series", "Pearson r", "Mean error (mL)", "Mean error (%)",
                        "Mean abs. error (mL)"], rows) + [""]
    if "dice" in v:
      rows = [[name, str(e.get("n_series", e.get("n_slices"))), _f3(e["dice"])] for name, e in v["dice"].items()]
      lines += [("Dice of predicted blood (seed 001 per type: series containing the type; last row: slices with "
                "blood only, seed 002):"), ""]
      lines += _md_table(["Hemorrhage", "n", "Dice"], rows) + [""]

  extras = [f"{line}." for line in _other_lines(m, _f3)]
  if extras:
    lines += ["## Other", ""] + extras + [""]
  if figures:
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
  return "\n".join(lines)


# --- Files -------------------------------------------------------------------------------


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_metrics(m: Mapping, path: str | pathlib.Path) -> None:
  """metrics.json (NaN as null), atomically (ich_jax.atomic): a reader never sees half a file."""
  atomic.write_text(path, json.dumps(_jsonable(dict(m)), indent=2, sort_keys=True))


def write_text(path: pathlib.Path, text: str) -> None:
  """`text` at `path`, atomically (ich_jax.atomic): a reader never sees half a file."""
  atomic.write_text(path, text)


def _figures(preds, compare, m, out_dir: pathlib.Path, volumes) -> list[str]:
  from ich_jax.eval import plots

  labels = _labels(preds)
  prob = np.asarray(preds["probabilities"], np.float64)
  study = np.asarray(preds["study_id"])
  other = None if compare is None else np.asarray(compare["probabilities"], np.float64)
  names = []
  for level in ("scan", "slice"):
    y = labels if level == "slice" else _scan(labels, study) > 0.5
    p = prob if level == "slice" else _scan(prob, study)
    curves = {name: M.roc_curve(y[:, c], p[:, c])[:2] for c, name in enumerate(LABELS)}
    points = {name: (1 - m[level][name]["specificity"], m[level][name]["sensitivity"]) for name in LABELS}
    dashed = None
    if other is not None:
      q = other if level == "slice" else _scan(other, study)
      dashed = {name: M.roc_curve(y[:, c], q[:, c])[:2] for c, name in enumerate(LABELS)}
    path = plots.roc_figure(curves, out_dir / f"roc_{level}.png", points=points, dashed=dashed,
                            aucs={n: m[level][n]["auc"] for n in LABELS},
                            title=f"ROC, {level} level (operating point at {m['threshold']})",
                            dashed_label=m.get("comparison", {}).get("name_b", "compared"))
    names.append(path.name)
  if volumes is not None and volumes["reference_ml"].size:
    v = m["volumes"]
    iph = volumes["iph_reference_ml"] > 0
    pairs = {"ABC/2, all blood": (volumes["reference_ml"], volumes["abc2_ml"]),
             "ABC/2, intraparenchymal": (volumes["iph_reference_ml"][iph], volumes["iph_abc2_ml"][iph])}
    keys = ["abc2", "abc2_intraparenchymal"]
    if "predicted_ml" in volumes:
      pairs["predicted mask"] = (volumes["reference_ml"], volumes["predicted_ml"])
      keys.append("predicted")
    path = plots.volume_scatter(pairs, out_dir / "volumes.png", stats=[f"r = {_f3(v[k]['pearson_r'])}" for k in keys],
                                reference_label=f"reference volume (mL, {v['reference']})")
    names.append(path.name)
  return names


def write_report(m: dict, preds: Mapping[str, np.ndarray], out_dir: str | pathlib.Path, *,
                 compare: Mapping[str, np.ndarray] | None = None, figures: bool = True,
                 title: str = "Evaluation report") -> dict:
  """Adds volume metrics to `m` and writes metrics.json, report.md, difficult_scans.csv, volumes.csv, PNGs.

  Returns `m` (with the "volumes" entry when the predictions carry masks).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  table = series_volumes(preds)
  if table is not None:
    m["volumes"] = volume_metrics(preds)
    with atomic.open_write(out_dir / "volumes.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(list(table))
      w.writerows(zip(*[[v if isinstance(v, str) else format(v, ".6g") for v in col.tolist()]
                        for col in table.values()]))
  if "difficult_scans" in m:
    study = np.asarray(preds["study_id"])
    ids, scan_prob = M.scan_scores(np.asarray(preds["probabilities"], np.float64)[:, 0], study)
    scan_label = _scan(_labels(preds)[:, 0], study) > 0.5
    d = m["difficult_scans"]
    hard = M.difficult_cases(scan_label, scan_prob, d["pos_max"], d["neg_min"])
    with atomic.open_write(out_dir / "difficult_scans.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["study_id", "any", "prob_any"])
      w.writerows([str(i), int(l), format(p, ".6g")] for i, l, p in zip(ids[hard], scan_label[hard], scan_prob[hard]))
  names = _figures(preds, compare, m, out_dir, table) if figures else []
  write_metrics(m, out_dir / "metrics.json")
  write_text(out_dir / "report.md", format_markdown(m, title=title, figures=names))
  return m
