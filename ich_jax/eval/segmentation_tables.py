"""Seed 002's tables (Tables 5 and 6, Dice per subtype) for the threshold baseline and the two U-Nets.

Each method's held-out predictions (`predictions.npz` of every cross-validation
round that ran) are pooled: over the rounds, every slice of the dataset is
held out once.

Table 5 (as the public code's `class_report`, which the table summarises):
per study with blood, the mean Jaccard and Dice over its slices with blood;
the rows are the min, max, standard deviation and mean of those per-study
values. Sensitivity and specificity are slice-level within each study (a study
without blood slices has no sensitivity; one without blood-free slices no
specificity), summarised the same way, with the pooled slice-level values
beside them. A predicted slice is positive when its probability reaches the
operating threshold (0.5): for the U-Nets, when `task.slice_min_pixels` pixels
of the post-processed map reach it (the k-th largest pixel, `ich_jax.models.maps`;
seed 002's public code: more than 20 × 20); for the baseline, that many pixels
in range. A reference slice has blood by its slice label, or, with
`reference_min_pixels` k > 0, when its mask has at least k blood pixels (the
public code tests the reference mask's sum too: configs/physionet_patch_unet.py).

Table 6: slice-level sensitivity, specificity and accuracy at thresholds
0.5–0.9, pooled. Dice per subtype: mean slice Dice over the slices with blood
that show the subtype (the slice labels; seed 002 averages by subject).

The headline is "Dice on slices with blood": mean per-slice Dice over every
slice with blood (seed 002's 0.31 for the patch U-Net, 0.135 for the
thresholds).
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from ich_jax import LABELS, SUBTYPES
from ich_jax.eval import metrics as M
from ich_jax.eval.classification import SWEEP_THRESHOLDS
from ich_jax.eval.formatting import md_table, number, percent

METHODS = (("threshold", "Threshold baseline (grid search)"), ("full_unet", "U-Net, full slices"),
           ("patch_unet", "U-Net, patches (stitched)"))


def load_pooled(stage_dirs) -> dict[str, np.ndarray] | None:
  """The rounds' predictions.npz concatenated, or None if none exists."""
  parts = []
  for d in stage_dirs:
    path = pathlib.Path(d) / "predictions.npz"
    if path.is_file():
      with np.load(path) as z:
        parts.append({k: z[k] for k in z.files})
  if not parts:
    return None
  keys = set.intersection(*(set(p) for p in parts))
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _summary(values: np.ndarray) -> dict:
  v = values[np.isfinite(values)]
  if not v.size:
    return {k: math.nan for k in ("min", "max", "std", "mean")} | {"n": 0}
  return {"min": float(v.min()), "max": float(v.max()), "std": float(v.std()), "mean": float(v.mean()), "n": int(v.size)}


def slice_truth(preds: dict[str, np.ndarray], reference_min_pixels: int = 0) -> np.ndarray:
  """Which slices have blood for the slice-level tables: the "any" label (0), or at least
  `reference_min_pixels` blood pixels in the reference mask."""
  if reference_min_pixels < 0:
    raise ValueError(f"config eval.slice_reference_min_pixels={reference_min_pixels}: need >= 0")
  if reference_min_pixels == 0:
    return np.asarray(preds["labels"])[:, 0] > 0.5
  ref = np.asarray(preds["mask"])
  return (ref.reshape(len(ref), -1) > 0).sum(1) >= reference_min_pixels


def method_metrics(preds: dict[str, np.ndarray], threshold: float = 0.5, reference_min_pixels: int = 0) -> dict:
  """Tables 5/6 and Dice per subtype of one method's pooled predictions (see the module docstring)."""
  ref, pred = np.asarray(preds["mask"]), np.asarray(preds["pred_mask"])
  blood = ref.reshape(len(ref), -1).any(1)
  slice_dice = M.dice(pred, ref, axis=(1, 2))          # NaN where both are empty
  slice_jac = M.jaccard(pred, ref, axis=(1, 2))
  y = slice_truth(preds, reference_min_pixels)
  p = np.asarray(preds["probabilities"], np.float64)[:, 0]
  positive = p >= threshold
  study = np.asarray(preds["study_id"]).astype(str)
  per_study = {"jaccard": [], "dice": [], "sensitivity": [], "specificity": []}
  for s in np.unique(study):
    rows = study == s
    b = rows & blood
    per_study["jaccard"].append(slice_jac[b].mean() if b.any() else math.nan)
    per_study["dice"].append(slice_dice[b].mean() if b.any() else math.nan)
    pos, neg = rows & y, rows & ~y
    per_study["sensitivity"].append(positive[pos].mean() if pos.any() else math.nan)
    per_study["specificity"].append((~positive[neg]).mean() if neg.any() else math.nan)
  table5 = {k: _summary(np.asarray(v, np.float64)) for k, v in per_study.items()}
  pooled = M.binary_stats(y, p, threshold)
  sweep = [{"threshold": t, **{k: M.binary_stats(y, p, t)[k] for k in ("sensitivity", "specificity", "accuracy")}}
           for t in SWEEP_THRESHOLDS]
  labels = np.asarray(preds["labels"]) > 0.5
  per_subtype = {}
  for name in SUBTYPES:
    rows = blood & labels[:, LABELS.index(name)]
    per_subtype[name] = {"n_slices": int(rows.sum()), "dice": float(slice_dice[rows].mean()) if rows.any() else math.nan}
  return {"n_slices": int(len(ref)), "n_slices_with_blood": int(blood.sum()), "n_studies": int(len(np.unique(study))),
          "dice_slices_with_blood": float(slice_dice[blood].mean()) if blood.any() else math.nan,
          "jaccard_slices_with_blood": float(slice_jac[blood].mean()) if blood.any() else math.nan,
          "table5": table5, "pooled": {k: pooled[k] for k in ("sensitivity", "specificity", "accuracy")},
          "table6": sweep, "dice_per_subtype": per_subtype}


def tables(runs, threshold: float = 0.5, *, min_pixels: int = 1, reference_min_pixels: int = 0) -> dict:
  """method → its metrics (None where no round has predictions), plus what each round chose.

  runs: (method, round, run folder) of every stage of the experiment. `min_pixels`: the predictions' slice
  rule (task.slice_min_pixels, already in their probabilities), recorded; `reference_min_pixels`: the
  reference's (`slice_truth`).
  """
  out = {"methods": {}, "rounds": {},
         "slice_rule": {"min_pixels": int(min_pixels), "reference_min_pixels": int(reference_min_pixels)}}
  for method, _ in METHODS:
    mine = [(fold, pathlib.Path(d)) for m, fold, d in runs if m == method]
    preds = load_pooled([d for _, d in mine])
    out["methods"][method] = None if preds is None else {**method_metrics(preds, threshold, reference_min_pixels),
                                                         "folds": sorted(fold for fold, _ in mine)}
  for method, fold, d in runs:
    for name in ("thresholds.json", "selection.json"):
      path = pathlib.Path(d) / name
      if path.is_file():
        out["rounds"].setdefault(f"fold{fold}/{method}", json.loads(path.read_text()))
  return out


def _slice_rule(rule: dict | None) -> str:
  rule = rule or {"min_pixels": 1, "reference_min_pixels": 0}
  k, r = rule["min_pixels"], rule["reference_min_pixels"]
  pred = "any pixel" if k == 1 else f"at least {k} pixels"
  ref = "its slice label" if r == 0 else f"at least {r} blood pixels in its mask"
  return f"A slice is predicted positive from {pred} at the threshold; it has blood by {ref}."


def format_markdown(t: dict, *, title: str, dataset: str, folds: str) -> str:
  lines = [f"# {title}", "", f"Dataset {dataset}; {folds}. Held-out predictions of every round run, pooled.", ""]
  lines += ["## Dice on slices with blood", "",
            "Mean slice Dice and Jaccard over every held-out slice with blood (seed 002: thresholds 0.135, "
            "patch U-Net 0.31).", ""]
  rows = []
  for method, label in METHODS:
    m = t["methods"][method]
    rows.append([label] + (["not run"] * 4 if m is None else
                           [str(m["n_slices_with_blood"]), str(m["n_slices"]), number(m["dice_slices_with_blood"]),
                            number(m["jaccard_slices_with_blood"])]))
  lines += md_table(["Method", "Slices with blood", "Slices", "Dice", "Jaccard"], rows) + [""]
  for method, label in METHODS:
    m = t["methods"][method]
    if m is None:
      lines += [f"## {label}", "", "Not run: no round of this method has predictions.", ""]
      continue
    t5 = m["table5"]
    lines += [f"## {label}: Table 5", "",
              (f"{m['n_studies']} studies, rounds {m['folds']}. Jaccard and Dice: per study with blood, the mean "
               f"over its slices with blood ({t5['dice']['n']} studies). Sensitivity and specificity: slice level "
               f"within each study ({t5['sensitivity']['n']} / {t5['specificity']['n']} studies), at threshold "
               "0.5; pooled over all slices in the last row."), ""]
    rows = [[stat.capitalize() if stat != "std" else "STD", number(t5["jaccard"][stat]), number(t5["dice"][stat]),
             percent(t5["sensitivity"][stat]), percent(t5["specificity"][stat])]
            for stat in ("min", "max", "std", "mean")]
    rows.append(["Pooled slices", number(m["jaccard_slices_with_blood"]), number(m["dice_slices_with_blood"]),
                 percent(m["pooled"]["sensitivity"]), percent(m["pooled"]["specificity"])])
    lines += md_table(["", "Jaccard", "Dice", "Sensitivity (%)", "Specificity (%)"], rows) + [""]
    lines += [f"### {label}: Table 6 (slice level)", "", _slice_rule(t.get("slice_rule")), ""]
    lines += md_table(["Threshold", "Sensitivity (%)", "Specificity (%)", "Accuracy (%)"],
                      [[f"{r['threshold']:.1f}", percent(r["sensitivity"]), percent(r["specificity"]),
                        percent(r["accuracy"])] for r in m["table6"]]) + [""]
    if method == "threshold":
      lines += ["The baseline's slice probability is 0 or 1, so every threshold gives the same row.", ""]
    lines += [f"### {label}: Dice per subtype", ""]
    lines += md_table(["Subtype", "Slices", "Dice"],
                      [[name, str(e["n_slices"]), number(e["dice"])] for name, e in m["dice_per_subtype"].items()])
    lines += [""]
  if t["rounds"]:
    lines += ["## What each round chose", ""]
    rows = []
    for key, r in sorted(t["rounds"].items()):
      if "lower" in r:
        rows.append([key, f"thresholds {r['lower']}–{r['upper']} (training Jaccard {r['train_jaccard']:.3f})"])
      else:
        rows.append([key, f"checkpoint {r['step']} (validation Jaccard {r['scores'][str(r['step'])]:.3f})"])
    lines += md_table(["Round / stage", "Choice"], rows) + [""]
  return "\n".join(lines)
