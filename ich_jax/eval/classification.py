"""Classification metrics of one evaluation: per class and level, strata, threshold sweep, difficult scans.

Scan level: a study's probability (and label) is the maximum over its slices
(seeds 000, 003). Statistics: AUC 95% intervals are percentile bootstraps (seed
000 §2.1.5: 500 replications, stratified by class); at the slice level whole
studies are resampled, since slices of one scan are not independent. DeLong
p-values are two-sided; at the slice level they treat slices as independent,
so the scan level is the one to quote.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, SIZE_BINS, size_bin
from ich_jax.eval import metrics as M
from ich_jax.eval.prediction_files import BASELINE_COLUMN, LABEL_COLUMNS

# Seed 002, Table 6: slice-level sensitivity/specificity/accuracy at thresholds 0.5–0.9.
SWEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Seed 000 §2.3: "difficult-for-AI" cases, positives at p <= 0.6 and negatives at p >= 0.4.
DIFFICULT_POS_MAX, DIFFICULT_NEG_MIN = 0.6, 0.4


def binary_labels(preds: Mapping[str, np.ndarray]) -> np.ndarray:
  """The predictions' labels as booleans [N, 6]; an error that says how to give them when there are none."""
  if "labels" not in preds:
    raise ValueError("the predictions have no labels: add the label columns "
                     f"{list(LABEL_COLUMNS)} or pass a labels CSV (--labels)")
  return np.asarray(preds["labels"]) > 0.5


def scan_max(values: np.ndarray, study_ids: np.ndarray) -> np.ndarray:
  """Per-slice values → per study, the maximum over its slices (a scan's probability and label)."""
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
  bins = size_bin(ml) if ml is not None else None
  out = {}
  for c, name in enumerate(LABELS):
    rows = {"all": y[:, c]}
    if bins is not None:
      rows.update({b: y[:, c] & (bins == b) for b in SIZE_BINS})
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
  on the same rows (see `prediction_files.align`), tested against this one with DeLong's test.
  """
  prob = M.check_scores(preds["probabilities"], "probabilities")
  labels = binary_labels(preds)
  if prob.shape != labels.shape or prob.shape[1:] != (len(LABELS),):
    raise ValueError(f"probabilities {prob.shape} and labels {labels.shape} must both be [N, {len(LABELS)}]")
  study = np.asarray(preds["study_id"])
  scan_prob, scan_labels = scan_max(prob, study), scan_max(labels, study) > 0.5
  ml = np.asarray(preds["study_blood_ml"], np.float64) if "study_blood_ml" in preds else None
  scan_ml = scan_max(ml, study) if ml is not None else None
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
                                for level in levels} for b in SIZE_BINS}
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
    base = M.check_scores(baseline, "baseline")
    out["baseline_bright_fraction"] = {"slice_auc_any": M.roc_auc(labels[:, 0], base),
                                       "scan_auc_any": M.roc_auc(scan_labels[:, 0], scan_max(base, study))}
  if compare is not None:
    other = M.check_scores(compare["probabilities"], f"{names[1]} probabilities")
    if other.shape != prob.shape:
      raise ValueError(f"{names[1]} probabilities {other.shape} != {names[0]} probabilities {prob.shape}")
    scan_other = scan_max(other, study)
    cmp = {"name_a": names[0], "name_b": names[1], "slice": {}, "scan": {}}
    for level, (y, p, q) in {"slice": (labels, prob, other), "scan": (scan_labels, scan_prob, scan_other)}.items():
      for c, name in enumerate(LABELS):
        cmp[level][name] = M.delong_test(y[:, c], p[:, c], q[:, c])
    out["comparison"] = cmp
  return out

