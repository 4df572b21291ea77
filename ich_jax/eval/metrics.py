"""Metrics and statistics on numpy arrays (numpy in, float/ndarray out).

Pure, vectorised and deterministic given `seed`. What the seed papers report:

- discrimination: `roc_auc`, `roc_curve`, `binary_stats` at a threshold,
  `weighted_log_loss` (the RSNA 2019 metric, seed 003);
- uncertainty and comparison: `bootstrap_ci` (seed 000 §2.1.5: 500 bootstrap
  replications for 95% intervals), `delong_ci` and `delong_test` (seed 000:
  "the DeLong test for AUC comparison");
- segmentation and volume: `dice`, `jaccard`, `volume_ml`, `abc2_ml`,
  `pearson_r` (seed 001: Dice per subtype, Pearson r of volumes vs ABC/2);
  `size_bin` (seed 001's bins);
- case handling: `scan_scores` (scan = max over slices, seeds 000 and 003),
  `difficult_cases` (seed 000 §2.3), `fleiss_kappa` (seed 000 §3.5).

What "empty" means, everywhere:
- AUC (and DeLong) with one class present is NaN: undefined, never 0.5.
- Dice and Jaccard of two empty masks return the `empty` argument (default
  NaN: the pair is not scored, as seed 002 scores only slices with blood and
  MONAI's `ignore_empty` does). One empty mask against a non-empty one is 0.
- A rate with a zero denominator (sensitivity with no positives) is NaN.
Bad input raises ValueError naming the argument and the offending value/index.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import spatial, stats


def _check_binary(y_true, name="y_true") -> np.ndarray:
  y = np.asarray(y_true)
  if y.dtype == bool:
    return y
  values = np.unique(y)
  if not np.isin(values, (0, 1)).all():
    raise ValueError(f"{name} must be 0/1; found values {values[:10]}")
  return y.astype(bool)


def check_scores(score, name="score") -> np.ndarray:
  s = np.asarray(score, dtype=np.float64)
  bad = ~np.isfinite(s)
  if bad.any():
    first = np.unravel_index(np.flatnonzero(bad)[0], s.shape)
    first = first[0] if len(first) == 1 else first
    raise ValueError(f"{name} has {bad.sum()} non-finite value(s), first at index {first}: {s[first]}")
  return s


def _check_pair(y_true, score, score_name="score") -> tuple[np.ndarray, np.ndarray]:
  y = _check_binary(y_true)
  s = check_scores(score, score_name)
  if y.shape != s.shape:
    raise ValueError(f"y_true shape {y.shape} != {score_name} shape {s.shape}")
  return y, s


def _ratio(a, b) -> float:
  return a / b if b else float("nan")


# --- Discrimination -------------------------------------------------------------


def _placements(y: np.ndarray, s: np.ndarray) -> np.ndarray:
  """DeLong's structural components of every case, from one sort: O(n log n).

  A positive's value is the fraction of negatives scored below it, a
  negative's the fraction of positives scored above it; ties count 1/2 (the
  Mann–Whitney kernel). The AUC is the mean over positives. Needs both classes.
  """
  order = np.argsort(s, kind="stable")
  s_sorted, y_sorted = s[order], y[order]
  group = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
  pos_in = np.bincount(group, weights=y_sorted)
  neg_in = np.bincount(group) - pos_in
  n_pos, n_neg = pos_in.sum(), neg_in.sum()
  neg_below = np.cumsum(neg_in) - neg_in
  pos_above = n_pos - np.cumsum(pos_in)
  sorted_values = np.where(y_sorted, ((neg_below + 0.5 * neg_in) / n_neg)[group],
                           ((pos_above + 0.5 * pos_in) / n_pos)[group])
  out = np.empty_like(sorted_values)
  out[order] = sorted_values
  return out


def roc_auc(y_true, score) -> float:
  """Area under the ROC curve as the Mann–Whitney statistic (ties count 1/2).

  NaN when only one class is present: the AUC is undefined there, and a report
  should say so rather than print 0.5.
  """
  y, s = _check_pair(y_true, score)
  y, s = y.ravel(), s.ravel()
  if y.all() or not y.any():
    return float("nan")
  return float(_placements(y, s)[y].mean())


def roc_curve(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) of the decisions `score >= t`, one point per distinct score.

  Thresholds decrease from +inf (nothing called positive: the (0, 0) corner)
  to the smallest score (everything positive: (1, 1)). Tied scores form one
  point, so the trapezoid area under the curve equals `roc_auc`. With one
  class present the undefined rate is NaN.
  """
  y, s = _check_pair(y_true, score)
  y, s = y.ravel(), s.ravel()
  order = np.argsort(-s, kind="stable")
  s_sorted, y_sorted = s[order], y[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1] if s.size else np.zeros(0, int)
  tps = np.cumsum(y_sorted)[last_of_tie]
  fps = last_of_tie + 1 - tps
  n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
  tpr = np.r_[0, tps] / n_pos if n_pos else np.full(tps.size + 1, np.nan)
  fpr = np.r_[0, fps] / n_neg if n_neg else np.full(fps.size + 1, np.nan)
  return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, s_sorted[last_of_tie]]


def binary_stats(y_true, score, threshold: float = 0.5) -> dict:
  """Confusion counts and rates of the decision `score >= threshold` (seed 000 used 0.5)."""
  y, s = _check_pair(y_true, score)
  pred = s >= threshold
  tp = int((pred & y).sum()); fp = int((pred & ~y).sum())
  tn = int((~pred & ~y).sum()); fn = int((~pred & y).sum())
  return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
          "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
          "accuracy": _ratio(tp + tn, y.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def weighted_log_loss(y_true, prob, weights: Sequence[float] = (2, 1, 1, 1, 1, 1)) -> float:
  """RSNA 2019 challenge metric: class-weighted mean of per-column log-loss.

  Columns in the order any, epidural, intraparenchymal, intraventricular,
  subarachnoid, subdural ("any" weighted 2); probabilities clipped to
  [1e-7, 1 - 1e-7].
  """
  y = np.asarray(y_true, dtype=np.float64)
  p = np.clip(check_scores(prob, "prob"), 1e-7, 1 - 1e-7)
  w = np.asarray(weights, dtype=np.float64)
  if y.shape != p.shape or y.shape[-1] != w.size:
    raise ValueError(f"y_true {y.shape}, prob {p.shape} and weights {w.shape} disagree")
  per_element = -(y * np.log(p) + (1 - y) * np.log1p(-p))
  return float((per_element * w).sum(-1).mean() / w.sum())


# --- Uncertainty and comparison ---------------------------------------------------


def _resample_units(y: np.ndarray, groups, stratified: bool):
  """Units to resample (rows, or groups of rows) and, per stratum, their indices."""
  label = y if y.ndim == 1 else y[:, 0]
  if groups is None:
    unit_label = label
    members = None
  else:
    g = np.asarray(groups)
    if g.shape != label.shape:
      raise ValueError(f"groups shape {g.shape} != y_true rows {label.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    unit_label = np.zeros(inverse.max() + 1, bool)
    np.logical_or.at(unit_label, inverse, label)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    members = (order, np.r_[0, np.cumsum(sizes)[:-1]], sizes)
  units = np.arange(unit_label.size)
  strata = [units[unit_label], units[~unit_label]] if stratified else [units]
  return [s for s in strata if s.size], members


def bootstrap_ci(metric_fn: Callable, y_true, score, n_boot: int = 500, alpha: float = 0.05, seed: int = 0,
                 stratified: bool = True, groups=None) -> tuple[float, float, float]:
  """(point, lo, hi): `metric_fn(y_true, score)` and its percentile bootstrap interval.

  Seed 000 (§2.1.5) used 500 replications for 95% intervals. `stratified`
  resamples positives and negatives separately, so every replicate keeps the
  sample's class balance and an AUC is always defined; with a 2-D `y_true` the
  strata come from its first column (the "any" label). `groups` (e.g. study
  ids) resamples whole groups, the case bootstrap: slices of one scan are
  correlated, and resampling them one by one would make slice-level intervals
  too narrow; a group's stratum is positive when any of its rows is.
  Replicates where the metric is NaN are ignored; a NaN point gives NaN bounds.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha={alpha} must be in (0, 1)")
  if n_boot < 1:
    raise ValueError(f"n_boot={n_boot} must be >= 1")
  y = _check_binary(y_true)
  s = np.asarray(score)
  if len(y) != len(s):
    raise ValueError(f"y_true has {len(y)} rows, score {len(s)}")
  point = float(metric_fn(y, s))
  if np.isnan(point):
    return point, float("nan"), float("nan")
  strata, members = _resample_units(y, groups, stratified)
  rng = np.random.default_rng(seed)
  values = np.empty(n_boot)
  for b in range(n_boot):
    units = np.concatenate([st[rng.integers(0, st.size, st.size)] for st in strata])
    if members is None:
      idx = units
    else:
      order, starts, sizes = members
      counts = sizes[units]
      # Rows of each drawn group, concatenated: start of the group + offset within it.
      offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
      idx = order[np.repeat(starts[units], counts) + offsets]
    values[b] = metric_fn(y[idx], s[idx])
  if np.isnan(values).all():
    return point, float("nan"), float("nan")
  lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return point, float(lo), float(hi)


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """AUCs [k] and their covariance [k, k] for scores [k, n] (DeLong et al. 1988).

  The variance is cov(positives' components)/m + cov(negatives')/n, with the
  components from one sort per score (Sun & Xu 2014's fast DeLong).
  """
  comps = np.stack([_placements(y, s) for s in scores])
  v10, v01 = comps[:, y], comps[:, ~y]
  m, n = v10.shape[1], v01.shape[1]
  aucs = v10.mean(1)
  if m < 2 or n < 2:
    return aucs, np.full((len(scores), len(scores)), np.nan)
  return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def delong_ci(y_true, score, alpha: float = 0.05) -> tuple[float, float, float]:
  """(auc, lo, hi): AUC ± z_{1-α/2}·SE with DeLong's variance, clipped to [0, 1].

  NaN when one class is present, and NaN bounds with fewer than two cases of
  a class (no variance estimate).
  """
  y, s = _check_pair(y_true, score)
  if y.ndim != 1:
    raise ValueError(f"delong_ci takes 1-D inputs; y_true has shape {y.shape}")
  if y.all() or not y.any():
    return float("nan"), float("nan"), float("nan")
  aucs, cov = _delong(y, s[None])
  half = stats.norm.ppf(1 - alpha / 2) * np.sqrt(cov[0, 0])
  return float(aucs[0]), float(max(0.0, aucs[0] - half)), float(min(1.0, aucs[0] + half))


def delong_test(y_true, score_a, score_b) -> dict:
  """DeLong's test of two correlated AUCs on the same cases (two-sided).

  Returns auc_a, auc_b, z = (auc_a - auc_b) / SE(difference) and p_value.
  Identical scores give z = 0, p = 1. NaN everywhere when one class is present.
  """
  y, a = _check_pair(y_true, score_a, "score_a")
  _, b = _check_pair(y_true, score_b, "score_b")
  if y.ndim != 1:
    raise ValueError(f"delong_test takes 1-D inputs; y_true has shape {y.shape}")
  nan = float("nan")
  if y.all() or not y.any():
    return {"auc_a": nan, "auc_b": nan, "z": nan, "p_value": nan}
  aucs, cov = _delong(y, np.stack([a, b]))
  diff = aucs[0] - aucs[1]
  var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
  if np.isnan(var):
    z = nan
  elif var <= 1e-300:
    # No variance: the two AUCs agree on every resample of the data.
    z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
  else:
    z = float(diff / np.sqrt(var))
  p = float(2 * stats.norm.sf(abs(z))) if not np.isnan(z) else nan
  return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": z, "p_value": p}


# --- Segmentation and volume --------------------------------------------------------


def _check_masks(pred, true) -> tuple[np.ndarray, np.ndarray]:
  p, t = np.asarray(pred), np.asarray(true)
  if p.shape != t.shape:
    raise ValueError(f"pred mask shape {p.shape} != true mask shape {t.shape}")
  # Non-zero is foreground: a subtype label map (0, 1–5) scores as "any blood".
  return p != 0, t != 0


def _overlap(pred, true, empty, axis, union_form: bool):
  p, t = _check_masks(pred, true)
  inter = (p & t).sum(axis=axis)
  total = p.sum(axis=axis) + t.sum(axis=axis)
  denom = total - inter if union_form else total
  num = inter if union_form else 2 * inter
  out = np.where(denom > 0, num / np.maximum(denom, 1), empty).astype(np.float64)
  return float(out) if out.ndim == 0 else out


def dice(pred, true, empty: float = float("nan"), axis=None):
  """Dice 2|P∩T| / (|P| + |T|) of binary masks (non-zero = foreground).

  `empty` is the score of two empty masks (default NaN: not scored, as seed
  002 scores slices with blood; 1.0 counts agreeing on "no blood" as perfect).
  `axis=None` pools every element; e.g. `axis=(1, 2)` gives one Dice per slice
  of an [N, H, W] stack.
  """
  return _overlap(pred, true, empty, axis, union_form=False)


def jaccard(pred, true, empty: float = float("nan"), axis=None):
  """Jaccard |P∩T| / |P∪T| of binary masks; `empty` and `axis` as in `dice`."""
  return _overlap(pred, true, empty, axis, union_form=True)


def _check_spacing(mask: np.ndarray, spacing_mm) -> np.ndarray:
  sp = np.asarray(spacing_mm, np.float64).ravel()
  if sp.size != mask.ndim or not np.isfinite(sp).all() or (sp <= 0).any():
    raise ValueError(f"spacing_mm={tuple(sp.tolist())} must hold {mask.ndim} positive values, one per mask axis "
                     f"(mask shape {mask.shape})")
  return sp


def volume_ml(mask, spacing_mm) -> float:
  """Volume of the non-zero voxels in mL; `spacing_mm` has one entry per axis, e.g. (dz, dy, dx)."""
  m = np.asarray(mask)
  sp = _check_spacing(m, spacing_mm)
  return float(np.count_nonzero(m) * np.prod(sp) / 1000.0)


def _diameters(rows: np.ndarray, cols: np.ndarray, dy: float, dx: float) -> tuple[float, float]:
  """Longest diameter A (mm) of one slice's blood and its extent perpendicular to A.

  Measured on the pixels' corners, edge to edge as a caliper would: a single
  pixel is dy × dx, not 0. B is the caliper width perpendicular to A, which
  is the perpendicular diameter of a convex bleed.
  """
  corners = np.concatenate([np.stack([(rows + a) * dy, (cols + b) * dx], 1) for a in (0, 1) for b in (0, 1)])
  corners = np.unique(corners, axis=0)
  hull = corners[spatial.ConvexHull(corners).vertices]
  d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
  i, j = np.unravel_index(np.argmax(d2), d2.shape)
  a_vec = hull[j] - hull[i]
  a = float(np.sqrt(d2[i, j]))
  normal = np.array([-a_vec[1], a_vec[0]]) / a
  proj = hull @ normal
  return a, float(proj.max() - proj.min())


def abc2_ml(mask, spacing_mm) -> float:
  """The clinical ABC/2 volume estimate (Kwak et al., as compared in seed 001), in mL.

  `mask` is [slices, rows, cols], `spacing_mm` (slice gap, row, col). On the
  slice with the largest blood area, A = longest diameter and B = largest
  diameter perpendicular to A; C = number of slices with blood × slice gap.
  0 for an empty mask. ABC/2 approximates an ellipsoid's π/6·ABC.
  """
  m = np.asarray(mask) != 0
  if m.ndim != 3:
    raise ValueError(f"abc2_ml takes a [slices, rows, cols] mask; got shape {m.shape}")
  dz, dy, dx = _check_spacing(m, spacing_mm)
  areas = m.sum(axis=(1, 2))
  if not areas.any():
    return 0.0
  rows, cols = np.nonzero(m[int(np.argmax(areas))])
  a, b = _diameters(rows, cols, dy, dx)
  c = np.count_nonzero(areas) * dz
  return float(a * b * c / 2 / 1000.0)


def pearson_r(x, y) -> float:
  """Pearson's correlation; NaN with fewer than 2 pairs or a constant input."""
  a, b = check_scores(x, "x").ravel(), check_scores(y, "y").ravel()
  if a.shape != b.shape:
    raise ValueError(f"x has {a.size} values, y {b.size}")
  if a.size < 2:
    return float("nan")
  a, b = a - a.mean(), b - b.mean()
  denom = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / denom) if denom > 0 else float("nan")


# --- Cases and raters --------------------------------------------------------------


def scan_scores(slice_scores, scan_ids, reduce: str = "max") -> tuple[np.ndarray, np.ndarray]:
  """Per-scan scores from per-slice ones; returns (unique scan ids, scores [n_scans, ...]).

  Seed 003 and seed 000: a scan's probability is its most suspicious slice's.
  """
  s = np.asarray(slice_scores, dtype=np.float64)
  ids, inverse = np.unique(np.asarray(scan_ids), return_inverse=True)
  inverse = inverse.ravel()
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


def difficult_cases(y_true, score, pos_max: float = 0.6, neg_min: float = 0.4) -> np.ndarray:
  """Boolean mask of "difficult-for-AI" cases (seed 000 §2.3).

  Positives the model scored <= `pos_max` and negatives it scored >=
  `neg_min`: the cases near the decision boundary or on its wrong side.
  """
  y, s = _check_pair(y_true, score)
  return (y & (s <= pos_max)) | (~y & (s >= neg_min))


def fleiss_kappa(ratings) -> float:
  """Fleiss' kappa of an [items, raters] array of category labels (any dtype).

  Every item has the same number of raters (the array's columns). NaN when
  chance agreement is 1 (every rating in one category): kappa is undefined.
  """
  r = np.asarray(ratings)
  if r.ndim != 2 or r.shape[1] < 2 or r.shape[0] < 1:
    raise ValueError(f"ratings must be [items, raters] with >= 2 raters; got shape {r.shape}")
  if r.dtype.kind == "f" and not np.isfinite(r).all():
    bad = np.argwhere(~np.isfinite(r))[0]
    raise ValueError(f"ratings has a non-finite label at item {bad[0]}, rater {bad[1]}: {r[tuple(bad)]}")
  n_items, n_raters = r.shape
  _, codes = np.unique(r, return_inverse=True)
  codes = codes.reshape(r.shape)
  counts = np.zeros((n_items, codes.max() + 1))
  np.add.at(counts, (np.repeat(np.arange(n_items), n_raters), codes.ravel()), 1)
  p_item = ((counts ** 2).sum(1) - n_raters) / (n_raters * (n_raters - 1))
  p_cat = counts.sum(0) / (n_items * n_raters)
  p_bar, p_e = p_item.mean(), (p_cat ** 2).sum()
  if np.isclose(p_e, 1.0):
    return float("nan")
  return float((p_bar - p_e) / (1 - p_e))
