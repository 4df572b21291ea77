"""Slice- and scan-level classification report: metrics.json and a printed table."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import numpy as np

from ich_jax import LABELS
from ich_jax.eval import metrics as M


def _scan_level(preds: Mapping[str, np.ndarray], scores: np.ndarray):
  ids, scan_score = M.scan_scores(scores, preds["study_id"], reduce="max")
  _, scan_labels = M.scan_scores(preds["labels"], preds["study_id"], reduce="max")
  _, scan_ml = M.scan_scores(preds["study_blood_ml"], preds["study_id"], reduce="max")
  return ids, scan_score, scan_labels, scan_ml


def classification_metrics(preds: Mapping[str, np.ndarray], *, threshold: float = 0.5,
                           baseline: np.ndarray | None = None) -> dict:
  """Metrics of per-slice probabilities [N, 6] against labels [N, 6].

  Scan level: a study's probability (and label) is the max over its slices
  (seed 003 and seed 000). Size bins use the study's total blood volume (seed
  001's bins): AUC(any) of the positives in one bin against all negatives.
  """
  prob = np.asarray(preds["probabilities"], np.float64)
  labels = np.asarray(preds["labels"]) > 0.5
  _, scan_prob, scan_labels, scan_ml = _scan_level(preds, prob)
  scan_labels = scan_labels > 0.5
  out: dict = {"n_slices": int(len(prob)), "n_scans": int(len(scan_prob)),
               "n_positive_slices": int(labels[:, 0].sum()), "n_positive_scans": int(scan_labels[:, 0].sum()),
               "threshold": threshold, "slice": {}, "scan": {}}
  for level, (y, p) in {"slice": (labels, prob), "scan": (scan_labels, scan_prob)}.items():
    for c, name in enumerate(LABELS):
      stats = M.binary_stats(y[:, c], p[:, c], threshold)
      out[level][name] = {"auc": M.roc_auc(y[:, c], p[:, c]), "sensitivity": stats["sensitivity"],
                          "specificity": stats["specificity"], "n_positive": int(y[:, c].sum())}
    out[level]["weighted_log_loss"] = M.weighted_log_loss(y, p)

  bins = {}
  slice_ml = np.asarray(preds["study_blood_ml"], np.float64)
  for name in M.SIZE_BINS:
    entry = {}
    for level, (y, p, ml) in {"slice": (labels[:, 0], prob[:, 0], slice_ml),
                              "scan": (scan_labels[:, 0], scan_prob[:, 0], scan_ml)}.items():
      in_bin = y & (M.size_bin(ml) == name)
      keep = in_bin | ~y
      entry[level] = {"auc": M.roc_auc(y[keep], p[keep]) if in_bin.any() else float("nan"),
                      "n_positive": int(in_bin.sum())}
    bins[name] = entry
  out["size_bins_any"] = bins

  if "mimic" in preds:
    mimic_neg = (np.asarray(preds["mimic"]) > 0) & ~labels[:, 0]
    out["mimic_negative_slices"] = {
        "n": int(mimic_neg.sum()),
        "false_positive_rate": float((prob[mimic_neg, 0] >= threshold).mean()) if mimic_neg.any() else float("nan")}
  if baseline is not None:
    _, scan_base, _, _ = _scan_level(preds, np.asarray(baseline, np.float64))
    out["baseline_bright_fraction"] = {"slice_auc_any": M.roc_auc(labels[:, 0], baseline),
                                       "scan_auc_any": M.roc_auc(scan_labels[:, 0], scan_base)}
  return out


def _fmt(x) -> str:
  return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.3f}"


def format_table(m: Mapping) -> str:
  lines = [f"Held-out: {m['n_slices']} slices ({m['n_positive_slices']} with blood), "
           f"{m['n_scans']} scans ({m['n_positive_scans']} with blood); threshold {m['threshold']}",
           "", f"{'class':<18} {'slice AUC':>9} {'sens':>6} {'spec':>6} | {'scan AUC':>8} {'sens':>6} {'spec':>6}"]
  for name in LABELS:
    s, c = m["slice"][name], m["scan"][name]
    lines.append(f"{name:<18} {_fmt(s['auc']):>9} {_fmt(s['sensitivity'])} {_fmt(s['specificity'])} | "
                 f"{_fmt(c['auc']):>8} {_fmt(c['sensitivity'])} {_fmt(c['specificity'])}")
  lines.append(f"{'weighted log-loss':<18} {_fmt(m['slice']['weighted_log_loss']):>9} {'':>13} | "
               f"{_fmt(m['scan']['weighted_log_loss']):>8}")
  lines += ["", "AUC(any) by study blood volume (positives in the bin vs all negatives):"]
  for name, entry in m["size_bins_any"].items():
    lines.append(f"  {name:<9} slice {_fmt(entry['slice']['auc'])} (n+={entry['slice']['n_positive']:4d})   "
                 f"scan {_fmt(entry['scan']['auc'])} (n+={entry['scan']['n_positive']:3d})")
  if "mimic_negative_slices" in m:
    mm = m["mimic_negative_slices"]
    lines.append(f"Negative slices with mimics: {mm['n']}, false-positive rate {_fmt(mm['false_positive_rate'])}")
  if "baseline_bright_fraction" in m:
    b = m["baseline_bright_fraction"]
    lines.append(f"No-learning baseline (fraction of intracranial pixels at 50–90 HU): "
                 f"slice AUC(any) {_fmt(b['slice_auc_any'])}, scan AUC(any) {_fmt(b['scan_auc_any'])}")
  return "\n".join(lines)


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_metrics(m: Mapping, path: str | pathlib.Path) -> None:
  path = pathlib.Path(path)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(_jsonable(dict(m)), indent=2, sort_keys=True))
  tmp.replace(path)
