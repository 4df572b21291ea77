"""Models scored on external test sets: seed 003's Table 4 with one column per set, DeLong between models.

Seed 003 (Table 4) reports AUC, specificity and sensitivity with 95% CIs per
class on RSNA, PhysioNet-ICH and CQ500; seed 000 (§2.1.5) bootstraps 500
replications and compares models with DeLong's test. Here every model of an
experiment is scored on every set with the same statistics as any evaluation
(`classification.classification_metrics`: scan = max slice, bootstrap by
study), and on each set every model is tested against the reference model
(the experiment's final one) on the same studies.

What a set cannot support is n/a, never 0: a class without positive (or
without negative) cases has no AUC; slice-level statistics of a set whose
labels are per scan (CQ500) do not exist. Inter-reader agreement (Fleiss'
kappa, seed 000 §3.5) is given where a set has several readers.
Pure numpy; the experiment (ich_jax.experiments.external) reads and writes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, SHORT
from ich_jax.eval import compare
from ich_jax.eval import metrics as M
from ich_jax.eval.classification import classification_metrics
from ich_jax.eval.formatting import MISSING, auc_ci, md_table, number, p_value

LEVELS = ("scan", "slice")
_STATS = ("auc", "auc_ci", "sensitivity", "specificity", "n_positive", "n_negative")


def _short(name: str) -> str:
  return "ICH" if name == "any" else SHORT[name]


def set_metrics(rows: Mapping[str, np.ndarray], *, scan_level_labels: bool, threshold: float, n_boot: int,
                seed: int) -> dict:
  """{level: {class: {auc, auc_ci, sensitivity, specificity, n_positive, n_negative}} | None} of one model on
  one set; "slice" is None where the labels are per scan."""
  m = classification_metrics(rows, threshold=threshold, n_boot=n_boot, seed=seed)
  out = {"n_scans": m["n_scans"], "n_slices": m["n_slices"], "n_positive_scans": m["n_positive_scans"]}
  for level in LEVELS:
    if level == "slice" and scan_level_labels:
      out[level] = None
      continue
    out[level] = {name: {k: m[level][name][k] for k in _STATS} for name in LABELS}
  return out


def delong_pairs(rows_by_model: Mapping[str, Mapping[str, np.ndarray]], pairs: Mapping[str, str]) -> dict:
  """{model: {class: delong_test(model vs pairs[model])}} at scan level on one set; the two models of a pair must
  have predicted the same studies with the same labels."""
  out = {}
  for name, reference in pairs.items():
    ref, other = compare.study_scores(rows_by_model[reference]), compare.study_scores(rows_by_model[name])
    if not np.array_equal(other["study_id"], ref["study_id"]) or not np.array_equal(other["labels"], ref["labels"]):
      raise ValueError(f"models {name!r} and {reference!r} did not predict the same studies with the same labels "
                       f"({len(other['study_id'])} and {len(ref['study_id'])} studies)")
    y = ref["labels"]
    out[name] = {c: M.delong_test(y[:, k], other["scores"][:, k], ref["scores"][:, k]) for k, c in enumerate(LABELS)}
  return out


def reader_agreement(reader_labels) -> dict:
  """Fleiss' kappa per class of [scans, readers, 6] reads (seed 000 §3.5), and the scans whose readers did not
  all agree on any hemorrhage (seed 000 §2.3's "difficult-for-humans" cases on Qure.ai, i.e. CQ500)."""
  r = np.asarray(reader_labels, np.float64)
  if r.ndim != 3 or r.shape[2] != len(LABELS):
    raise ValueError(f"reader labels must be [scans, readers, {len(LABELS)}]; got shape {r.shape}")
  votes = r[:, :, 0] > 0.5
  return {"n_scans": int(r.shape[0]), "n_readers": int(r.shape[1]),
          "not_unanimous_any": int((votes.any(1) & ~votes.all(1)).sum()),
          "fleiss_kappa": {c: M.fleiss_kappa(r[:, :, k] > 0.5) for k, c in enumerate(LABELS)}}


def external_tables(results: Mapping[str, Mapping[str, dict]], delong: Mapping[str, dict], pairs: Mapping[str, str],
                    table_model: str | None, agreement: Mapping[str, dict | None]) -> dict:
  """The JSON of the report: `results` {set: {model: set_metrics}}, `delong` {set: delong_pairs(pairs)},
  `table_model` the model of the per-class table (None: none), `agreement` {set: reader_agreement or None}."""
  return {"table_model": table_model, "pairs": dict(pairs), "sets": list(results),
          "results": {s: dict(r) for s, r in results.items()},
          "delong": {s: dict(d) for s, d in delong.items()}, "reader_agreement": dict(agreement)}


def _class_tables(t: Mapping, labels: Mapping[str, str], model: str) -> list[str]:
  """Seed 003 Table 4 for `model`: per class, one column per set, at scan and slice level."""
  sets, results, lines = t["sets"], t["results"], []
  for level in LEVELS:
    body, rates = [], []
    for c in LABELS:
      entries = [results[s][model].get(level) for s in sets]
      body.append([_short(c)] + [auc_ci(e[c]) if e is not None else MISSING for e in entries])
      rates.append([_short(c)] + [MISSING if e is None else
                                  f"{number(e[c]['sensitivity'])} / {number(e[c]['specificity'])} "
                                  f"({e[c]['n_positive']}/{e[c]['n_negative']})" for e in entries])
    lines += [f"## Table 4, {level} level: {model} on each test set", ""]
    lines += md_table(["Class"] + [f"{labels[s]} AUC [95% CI]" for s in sets], body) + [""]
    lines += md_table(["Class"] + [f"{labels[s]} sensitivity / specificity (n+/n−)" for s in sets], rates) + [""]
  return lines


def format_markdown(t: Mapping, *, labels: Mapping[str, str], threshold: float, n_boot: int,
                    models: Sequence[str]) -> str:
  """Table 4 of `t["table_model"]`, one column per set; every model's scan-level AUC(any) per set with DeLong's
  p against its pair; inter-reader agreement. `labels`: each set's display name."""
  sets, results, pairs = t["sets"], t["results"], t["pairs"]
  lines = [(f"A scan's probability is its maximum slice's; threshold {threshold}; 95% CIs from {n_boot} bootstrap "
            "replications resampling studies (stratified). n/a: a class without positive or negative cases in the "
            "set, or slice-level statistics of a set labelled per scan."), ""]
  if t.get("table_model"):
    lines += _class_tables(t, labels, t["table_model"])
  compared = sorted(set(pairs.values()))
  lines += [f"## Every model on each test set: scan-level AUC(any), DeLong's p against {', '.join(compared)}"
            if len(compared) == 1 else "## Every model on each test set: scan-level AUC(any), DeLong's p (paired)", ""]
  body = []
  for model in models:
    row = [model]
    for s in sets:
      test = t["delong"][s].get(model)
      row += [auc_ci(results[s][model]["scan"]["any"]),
              f"{p_value(test['any']['p_value'])} vs {pairs[model]}" if test else ""]
    body.append(row)
  head = ["Model"] + [x for s in sets for x in (f"{labels[s]} AUC(any) [95% CI]", "DeLong p")]
  lines += md_table(head, body) + [""]
  agreeing = {s: a for s, a in t["reader_agreement"].items() if a}
  if agreeing:
    lines += ["## Inter-reader agreement (Fleiss' kappa per class)", "",
              "Not unanimous: scans whose readers did not all agree on any hemorrhage (seed 000's "
              "\"difficult-for-humans\" cases).", ""]
    lines += md_table(["Set", "Scans", "Readers", "Not unanimous"] + [_short(c) for c in LABELS],
                      [[labels[s], str(a["n_scans"]), str(a["n_readers"]), str(a["not_unanimous_any"])]
                       + [number(a["fleiss_kappa"][c]) for c in LABELS] for s, a in agreeing.items()]) + [""]
  return "\n".join(lines)
