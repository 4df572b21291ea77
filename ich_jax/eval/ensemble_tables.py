"""Seed 000's ensemble tables: Table 3 (which base models to combine), Table 4 (the final ensemble against
the four classifiers of the strong-vs-weak experiment) and the difficult cases (§2.3).

Everything is at the case (scan) level: a scan's probability is its most
probable slice's (seed 000 §2.2.4), its label the max of its slices' labels.

Table 3 (§2.2.2: "From the two external test datasets, we extracted SAH, SDH,
and small hemorrhage cases (with the same number of normal CT scans) to test
the combination model"): for each combination, the AUC with its 95% bootstrap
interval (500 stratified replications, §2.1.5) on all held-out scans, and on
each subset: the scans with that lesion (a subdural, a subarachnoid, or blood
of at most `small_ml` mL) and as many scans without blood, drawn once with a
fixed seed and shared by every row (all normal scans when there are fewer);
DeLong's test against "basic" on the same scans.

Table 4: the final ensemble and each classifier on the scans both predicted
(joined on study_id): AUC [CI], sensitivity and specificity at 0.5, DeLong p
against the ensemble. A classifier whose run folder has no predictions.csv is
listed as not run. The experiment (ich_jax/experiments/weighted_ensemble.py)
reads the classifiers from the strong-vs-weak experiment's workdir.

Difficult cases (§2.3): scans with blood scored ≤ 0.6 and scans without blood
scored ≥ 0.4 by the final ensemble; all of them in difficult_cases.csv.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np

from ich_jax import LABELS
from ich_jax.eval import metrics as M
from ich_jax.eval.classification import DIFFICULT_NEG_MIN, DIFFICULT_POS_MAX
from ich_jax.eval.formatting import MISSING, auc_ci, md_table, number, p_value
from ich_jax.eval.prediction_files import read_predictions


def scan_table(preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per study: id, probability of any (max slice), labels [n, 6] (max slice), blood volume (mL, if known)."""
  study = np.asarray(preds["study_id"]).astype(str)
  ids, prob = M.scan_scores(np.asarray(preds["probabilities"], np.float64)[:, 0], study)
  _, labels = M.scan_scores(np.asarray(preds["labels"], np.float64), study)
  out = {"study_id": ids, "prob": prob, "labels": labels > 0.5}
  if "study_blood_ml" in preds:
    out["blood_ml"] = M.scan_scores(np.asarray(preds["study_blood_ml"], np.float64), study)[1]
  return out


def load(workdir) -> dict[str, np.ndarray] | None:
  """A run folder's predictions (predictions.npz, else predictions.csv), or None if it has neither."""
  d = pathlib.Path(workdir)
  for name in ("predictions.npz", "predictions.csv"):
    if (d / name).is_file():
      return read_predictions(d / name)
  return None


def subsets(scans: dict, small_ml: float, seed: int = 0) -> dict[str, np.ndarray]:
  """name → bool mask over scans: all, and per lesion kind its scans plus as many normal scans."""
  y = scans["labels"]
  normal = np.flatnonzero(~y[:, 0])
  lesions = {"subdural": y[:, LABELS.index("subdural")], "subarachnoid": y[:, LABELS.index("subarachnoid")]}
  if "blood_ml" in scans:
    lesions["small"] = y[:, 0] & (scans["blood_ml"] > 0) & (scans["blood_ml"] <= small_ml)
  rng = np.random.default_rng(seed)
  out = {"all": np.ones(len(y), bool)}
  for name, pos in lesions.items():
    pick = np.zeros(len(y), bool)
    pick[pos] = True
    n = min(int(pos.sum()), len(normal))
    pick[rng.choice(normal, n, replace=False)] = True
    out[name] = pick
  return out


def _auc(y, p, n_boot: int, seed: int) -> dict:
  # No bootstrap (n_boot=0): no interval, so the tables print the AUC alone rather than a zero-width one.
  auc, lo, hi = M.bootstrap_ci(M.roc_auc, y, p, n_boot=n_boot, seed=seed) if n_boot else (M.roc_auc(y, p), None, None)
  return {"auc": auc, "auc_ci": [lo, hi], "n_positive": int(y.sum()), "n_negative": int((~y).sum())}


def table3(rows: dict[str, dict | None], basic: str, small_ml: float, n_boot: int, seed: int) -> dict:
  """rows: label → scan table (None: not run). Every table must cover the same scans as `basic`'s."""
  base = rows[basic]
  if base is None:
    return {"error": f"the basic ensemble ({basic}) has no predictions"}
  picks = subsets(base, small_ml, seed)
  out = {"subsets": {k: {"n_scans": int(v.sum()), "n_positive": int((v & base["labels"][:, 0]).sum())}
                     for k, v in picks.items()}, "rows": {}}
  if "blood_ml" not in base:
    # A dataset without masks (rsna_ich) has no volumes, so no small-lesion cases: said, not silently absent.
    out["note"] = ("no small-lesion subset: the predictions carry no study_blood_ml (the dataset has no blood "
                   "volumes)")
  for label, scans in rows.items():
    if scans is None:
      out["rows"][label] = None
      continue
    if not np.array_equal(scans["study_id"], base["study_id"]):
      raise ValueError(f"Table 3: {label!r} was evaluated on other scans than {basic!r}")
    entry = {}
    for name, pick in picks.items():
      y = scans["labels"][pick, 0]
      e = _auc(y, scans["prob"][pick], n_boot, seed)
      e["delong_vs_basic"] = M.delong_test(y, scans["prob"][pick], base["prob"][pick]) if label != basic else None
      entry[name] = e
    out["rows"][label] = entry
  return out


def table4(final: dict, classifiers: dict[str, str], n_boot: int, seed: int, threshold: float) -> dict:
  """The final ensemble against each classifier's predictions (a workdir path each) on their common scans."""
  out = {}
  for name, workdir in classifiers.items():
    preds = load(workdir)
    if preds is None:
      out[name] = {"status": f"not run: no predictions.csv in {workdir}"}
      continue
    if "labels" not in preds:
      out[name] = {"status": f"{workdir}: predictions without labels"}
      continue
    other = scan_table(preds)
    common, i, j = np.intersect1d(final["study_id"], other["study_id"], return_indices=True)
    if not len(common):
      out[name] = {"status": f"no scan in common with the ensemble's held-out split ({workdir})"}
      continue
    y = final["labels"][i, 0]
    if not np.array_equal(y, other["labels"][j, 0]):
      out[name] = {"status": f"{workdir}: its labels of the common scans differ from the ensemble's"}
      continue
    entry = {"status": "ok", "n_scans": int(len(common)), "workdir": str(workdir)}
    for who, p in (("ensemble", final["prob"][i]), ("classifier", other["prob"][j])):
      st = M.binary_stats(y, p, threshold)
      entry[who] = {**_auc(y, p, n_boot, seed), "sensitivity": st["sensitivity"], "specificity": st["specificity"]}
    entry["delong"] = M.delong_test(y, final["prob"][i], other["prob"][j])
    out[name] = entry
  return out


def difficult(final: dict) -> list[dict]:
  """The final ensemble's difficult scans (§2.3), the missed ones first."""
  hard = M.difficult_cases(final["labels"][:, 0], final["prob"], DIFFICULT_POS_MAX, DIFFICULT_NEG_MIN)
  rows = []
  for k in np.flatnonzero(hard):
    rows.append({"study_id": str(final["study_id"][k]), "any": int(final["labels"][k, 0]),
                 "prob_any": float(final["prob"][k]),
                 "subtypes": " ".join(n for c, n in enumerate(LABELS) if c and final["labels"][k, c]),
                 "blood_ml": float(final["blood_ml"][k]) if "blood_ml" in final else math.nan})
  return sorted(rows, key=lambda r: (-r["any"], r["prob_any"] if r["any"] else -r["prob_any"]))


def _ci(e) -> str:
  return auc_ci(e) if e is not None else MISSING


def format_markdown(t: dict, *, title: str, meta: str, max_difficult: int = 25) -> str:
  lines = [f"# {title}", "", meta, ""]
  t3 = t["table3"]
  lines += ["## Table 3: combinations of the base models", ""]
  if "error" in t3:
    lines += [t3["error"], ""]
  else:
    subs = list(t3["subsets"])
    lines += [("Scan-level AUC [95% bootstrap CI] and DeLong p against basic. Subsets: "
               + "; ".join(f"{k}: {v['n_scans']} scans ({v['n_positive']} with blood)" for k, v in t3["subsets"].items())
               + ". Each lesion subset holds its lesion's scans and as many scans without blood."
               + (f" {t3['note'][0].upper()}{t3['note'][1:]}." if "note" in t3 else "")), ""]
    header = ["Ensemble"] + [h for s in subs for h in (f"AUC {s}", f"p {s}")]
    rows = []
    for label, entry in t3["rows"].items():
      if entry is None:
        rows.append([label] + ["not run"] * (2 * len(subs)))
        continue
      cells = [label]
      for s in subs:
        e = entry[s]
        d = e["delong_vs_basic"]
        cells += [_ci(e), "—" if d is None else p_value(d["p_value"])]
      rows.append(cells)
    lines += md_table(header, rows) + [""]
  lines += ["## Table 4: the final ensemble against the strong-vs-weak classifiers", ""]
  t4 = t["table4"]
  if not t4:
    lines += ["No classifier runs configured (config experiment.strong_vs_weak, experiment.classifiers).", ""]
  else:
    rows = []
    for name, e in t4.items():
      if e["status"] != "ok":
        rows.append([name, e["status"], "", "", "", ""])
        continue
      c, w = e["classifier"], e["ensemble"]
      rows.append([name, str(e["n_scans"]), f"{_ci(c)} vs {_ci(w)}",
                   f"{number(c['sensitivity'])} vs {number(w['sensitivity'])}",
                   f"{number(c['specificity'])} vs {number(w['specificity'])}", p_value(e["delong"]["p_value"])])
    lines += ["Classifier vs final ensemble on the scans both predicted; sensitivity and specificity at 0.5; "
              "DeLong p.", ""]
    lines += md_table(["Classifier", "Scans", "AUC [95% CI] classifier vs ensemble", "Sensitivity",
                       "Specificity", "p"], rows) + [""]
  hard = t["difficult"]
  n_pos = sum(r["any"] for r in hard)
  lines += ["## Difficult cases (seed 000 §2.3)", "",
            (f"Final ensemble: {len(hard)} difficult scans, {n_pos} with blood scored ≤ {DIFFICULT_POS_MAX} and "
             f"{len(hard) - n_pos} without blood scored ≥ {DIFFICULT_NEG_MIN}; all in difficult_cases.csv"
             + (f", the first {max_difficult} here." if len(hard) > max_difficult else ".")), ""]
  if hard:
    lines += md_table(["Study", "Blood", "P(any)", "Subtypes", "Blood (mL)"],
                      [[r["study_id"], str(r["any"]), number(r["prob_any"]), r["subtypes"] or "—",
                        number(r["blood_ml"])] for r in hard[:max_difficult]]) + [""]
  return "\n".join(lines)
