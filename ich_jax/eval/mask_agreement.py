"""Predicted masks against a reference map that is not hemorrhage (a skull-stripping model's brain masks).

Dice and Jaccard per slice, over the slices whose reference is not empty (as seed 002 scores only slices
with blood), summarised as mean, min, max and standard deviation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ich_jax.eval import metrics as M
from ich_jax.eval.formatting import md_table, number


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
  rows = [[name, number(m[name]["mean"]), number(m[name]["min"]), number(m[name]["max"]), number(m[name]["std"])]
          for name in ("dice", "jaccard")]
  return "\n".join([f"# {title}", "", (f"Predicted masks against `{m['reference']}` on the {m['n_slices']} of "
                    f"{m['n_slices_total']} slices where it is not empty."), ""]
                   + md_table(["", "Mean", "Min", "Max", "SD"], rows) + [""])

