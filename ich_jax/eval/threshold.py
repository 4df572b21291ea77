"""Seed 002's threshold baseline: blood is every pixel of the windowed 8-bit slice between two thresholds.

§5–6: "a grid search was implemented to select the lower and upper thresholds
of the ICH regions. The thresholds that resulted in the highest Jaccard index
on the training data were selected" — lower in 100–210, upper in 210–255 of
the brain-window (level 40, width 120) grey image; the paper found 140 and
230, test Dice 0.135. The Jaccard searched is seed 002's reported one: the
mean over training slices with blood (its public code's `Jaccard_img`). The
grid is every integer pair; per slice, two 256-bin histograms (all pixels,
blood pixels) give every pair's Jaccard from cumulative sums, so the search
costs one pass over the training slices. No post-processing: the paper
describes none for this baseline.

Seed 002's experiment runs it as a stage: `ich_jax.experiments.threshold_baseline`.
"""
from __future__ import annotations

import numpy as np

LOWER = tuple(range(100, 211))   # seed 002 §6: "a lower threshold in a 100 to 210 range"
UPPER = tuple(range(210, 256))   # "and an upper threshold in 210 to 255 range"


def to_uint8(windowed) -> np.ndarray:
  """A window in [0, 1] as the 8-bit grey image seed 002 thresholds (0 … 255, rounded)."""
  return np.rint(np.clip(np.asarray(windowed, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def histograms(grey: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per slice of grey [N, H, W] uint8 and mask [N, H, W] (non-zero = blood): pixel counts per grey
  level, of all pixels and of blood pixels, each [N, 256]."""
  grey, blood = np.asarray(grey), np.asarray(mask) != 0
  if grey.shape != blood.shape or grey.ndim != 3:
    raise ValueError(f"histograms: grey {grey.shape} and mask {blood.shape} must both be [N, H, W]")
  n = len(grey)
  rows = np.repeat(np.arange(n), grey[0].size)
  flat = grey.reshape(-1).astype(np.int64)
  every = np.bincount(rows * 256 + flat, minlength=n * 256).reshape(n, 256)
  inside = np.bincount(rows * 256 + flat, weights=blood.reshape(-1), minlength=n * 256).reshape(n, 256)
  return every, inside.astype(np.int64)


def grid_jaccard(every: np.ndarray, blood: np.ndarray, lower=LOWER, upper=UPPER) -> np.ndarray:
  """[len(lower), len(upper)]: mean Jaccard over slices with blood of the mask lower ≤ grey ≤ upper."""
  scored = blood.sum(1) > 0
  every, blood = every[scored], blood[scored]
  if not len(blood):
    return np.full((len(lower), len(upper)), np.nan)
  cum_all = np.concatenate([np.zeros((len(every), 1)), np.cumsum(every, 1)], 1)   # cum[:, g] = count < g
  cum_blood = np.concatenate([np.zeros((len(blood), 1)), np.cumsum(blood, 1)], 1)
  truth = blood.sum(1)
  lo, hi = np.asarray(lower), np.asarray(upper)
  out = np.empty((len(lo), len(hi)))
  for i, l in enumerate(lo):
    pred = cum_all[:, hi + 1] - cum_all[:, [l]]       # [slices, uppers]
    inter = cum_blood[:, hi + 1] - cum_blood[:, [l]]
    union = pred + truth[:, None] - inter
    out[i] = (inter / union).mean(0)
  return out


def search(every: np.ndarray, blood: np.ndarray, lower=LOWER, upper=UPPER) -> dict:
  """The (lower, upper) pair of best training Jaccard (ties: the first, lowest lower, then lowest upper)."""
  jac = grid_jaccard(every, blood, lower, upper)
  if np.isnan(jac).all():
    raise ValueError("threshold search: no training slice has blood")
  i, j = np.unravel_index(np.nanargmax(jac), jac.shape)
  return {"lower": int(lower[i]), "upper": int(upper[j]), "train_jaccard": float(jac[i, j]),
          "n_train_slices_with_blood": int((blood.sum(1) > 0).sum())}


def segment(grey: np.ndarray, lower: int, upper: int) -> np.ndarray:
  """uint8 masks: 1 where lower ≤ grey ≤ upper."""
  grey = np.asarray(grey)
  return ((grey >= lower) & (grey <= upper)).astype(np.uint8)
