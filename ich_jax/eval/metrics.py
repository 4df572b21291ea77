"""Classification metrics on numpy arrays (numpy in, float/ndarray out).

Pure and vectorised; the statistics issue extends this module (CIs, DeLong,
Dice, volumes), keeping these names.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

# Seed 001 paper (hybrid 3D/2D Mask R-CNN), size bins of hemorrhage volume in mL:
# punctate < 0.01, small 0.01–5, medium 5–25, large > 25. Edges: a bin holds its
# lower edge (0.01 is small, 5 is medium) except that 25 is still medium, since
# the paper calls large "> 25".
SIZE_BINS = ("punctate", "small", "medium", "large")


def _check_binary(y_true: np.ndarray, name="y_true") -> np.ndarray:
  y = np.asarray(y_true)
  values = np.unique(y)
  if not np.isin(values, (0, 1)).all():
    raise ValueError(f"{name} must be 0/1; found values {values[:10]}")
  return y.astype(bool)


def _check_scores(score: np.ndarray, name="score") -> np.ndarray:
  s = np.asarray(score, dtype=np.float64)
  bad = ~np.isfinite(s)
  if bad.any():
    raise ValueError(f"{name} has {bad.sum()} non-finite value(s), first at index {np.flatnonzero(bad)[0]}: "
                     f"{s[np.flatnonzero(bad)[0]]}")
  return s


def roc_auc(y_true, score) -> float:
  """Area under the ROC curve as the Mann–Whitney statistic (ties count 1/2).

  NaN when only one class is present: the AUC is undefined there, and a report
  should say so rather than print 0.5.
  """
  y = _check_binary(y_true)
  s = _check_scores(score)
  if y.shape != s.shape:
    raise ValueError(f"y_true shape {y.shape} != score shape {s.shape}")
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = stats.rankdata(s)  # average ranks for ties
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_stats(y_true, score, threshold: float = 0.5) -> dict:
  """Confusion counts and rates of the decision `score >= threshold`."""
  y = _check_binary(y_true)
  pred = _check_scores(score) >= threshold
  tp = int((pred & y).sum()); fp = int((pred & ~y).sum())
  tn = int((~pred & ~y).sum()); fn = int((~pred & y).sum())

  def ratio(a, b):
    return a / b if b else float("nan")

  return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
          "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
          "accuracy": ratio(tp + tn, y.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def weighted_log_loss(y_true, prob, weights: Sequence[float] = (2, 1, 1, 1, 1, 1)) -> float:
  """RSNA 2019 challenge metric: class-weighted mean of per-column log-loss.

  Columns in the order any, epidural, intraparenchymal, intraventricular,
  subarachnoid, subdural ("any" weighted 2); probabilities clipped to
  [1e-7, 1 - 1e-7].
  """
  y = np.asarray(y_true, dtype=np.float64)
  p = np.clip(_check_scores(prob, "prob"), 1e-7, 1 - 1e-7)
  w = np.asarray(weights, dtype=np.float64)
  if y.shape != p.shape or y.shape[-1] != w.size:
    raise ValueError(f"y_true {y.shape}, prob {p.shape} and weights {w.shape} disagree")
  per_element = -(y * np.log(p) + (1 - y) * np.log1p(-p))
  return float((per_element * w).sum(-1).mean() / w.sum())


def size_bin(volume_ml) -> np.ndarray | str:
  """Seed 001's bins: "punctate", "small", "medium", "large"; "none" for 0 mL."""
  v = np.asarray(volume_ml, dtype=np.float64)
  out = np.full(v.shape, "none", dtype=object)
  out[(v > 0) & (v < 0.01)] = "punctate"
  out[(v >= 0.01) & (v < 5)] = "small"
  out[(v >= 5) & (v <= 25)] = "medium"
  out[v > 25] = "large"
  return out.item() if out.ndim == 0 else out


def scan_scores(slice_scores, scan_ids, reduce: str = "max") -> tuple[np.ndarray, np.ndarray]:
  """Per-scan scores from per-slice ones; returns (unique scan ids, scores [n_scans, ...]).

  Seed 003 and seed 000: a scan's probability is its most suspicious slice's.
  """
  s = np.asarray(slice_scores, dtype=np.float64)
  ids, inverse = np.unique(np.asarray(scan_ids), return_inverse=True)
  out_shape = (ids.size,) + s.shape[1:]
  if reduce == "max":
    out = np.full(out_shape, -np.inf)
    np.maximum.at(out, inverse, s)
  elif reduce == "mean":
    out = np.zeros(out_shape)
    np.add.at(out, inverse, s)
    out /= np.bincount(inverse, minlength=ids.size).reshape((-1,) + (1,) * (s.ndim - 1))
  else:
    raise ValueError(f"reduce={reduce!r}; expected 'max' or 'mean'")
  return ids, out
