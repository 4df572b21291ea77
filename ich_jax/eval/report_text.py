"""The text of an evaluation: report.md (the papers' tables) and the short table printed after it.

Both read the metrics `classification.classification_metrics` computed (plus the volume section
`volumes.volume_metrics` adds); numbers print through `ich_jax.eval.formatting`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ich_jax import LABELS
from ich_jax.eval.compare import format_comparison
from ich_jax.eval.detection_text import format_detection
from ich_jax.eval.formatting import MISSING, auc_ci, is_missing, md_table, number, p_value, percent


def _cell(x) -> str:
  # Six wide, so that the console table's columns line up with or without a number.
  return number(x).rjust(6)


def format_table(m: Mapping) -> str:
  """The short table printed after an evaluation."""
  lines = [(f"Held-out: {m['n_slices']} slices ({m['n_positive_slices']} with blood), "
           f"{m['n_scans']} scans ({m['n_positive_scans']} with blood); threshold {m['threshold']}"),
           "", f"{'class':<18} {'slice AUC':>9} {'sens':>6} {'spec':>6} | {'scan AUC':>8} {'sens':>6} {'spec':>6}"]
  for name in LABELS:
    s, c = m["slice"][name], m["scan"][name]
    lines.append(f"{name:<18} {_cell(s['auc']):>9} {_cell(s['sensitivity'])} {_cell(s['specificity'])} | "
                 f"{_cell(c['auc']):>8} {_cell(c['sensitivity'])} {_cell(c['specificity'])}")
  lines.append(f"{'weighted log-loss':<18} {_cell(m['slice']['weighted_log_loss']):>9} {'':>13} | "
               f"{_cell(m['scan']['weighted_log_loss']):>8}")
  if "size_bins_any" in m:
    lines += ["", "AUC(any) by study blood volume (positives in the bin vs all negatives):"]
    for name, entry in m["size_bins_any"].items():
      lines.append(f"  {name:<9} slice {_cell(entry['slice']['auc'])} (n+={entry['slice']['n_positive']:4d})   "
                   f"scan {_cell(entry['scan']['auc'])} (n+={entry['scan']['n_positive']:3d})")
  return "\n".join(lines + _other_lines(m, _cell))


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


def format_markdown(m: Mapping, *, title: str = "Evaluation report", figures: Sequence[str] = ()) -> str:
  """report.md: the papers' tables for one evaluation (the statistics: ich_jax.eval.classification)."""
  lines = _header(m, title) + _detection(m)
  if "strata" in m:
    lines += _strata(m["strata"])
  if "threshold_sweep_any" in m:
    lines += _threshold_sweep(m["threshold_sweep_any"])
  if "comparison" in m:
    lines += _comparison(m["comparison"])
  if "difficult_scans" in m:
    d = m["difficult_scans"]
    lines += ["## Difficult scans", "",
              (f"Seed 000 §2.3: scans with blood scored ≤ {d['pos_max']} and scans without blood scored ≥ "
              f"{d['neg_min']} (probability of any). {d['n']} scans: {d['n_positive']} with blood, "
              f"{d['n_negative']} without; listed in difficult_scans.csv."), ""]
  if m.get("volumes"):
    lines += _volumes(m["volumes"])
  if m.get("detection"):
    lines += [format_detection(m["detection"]), ""]
  if m.get("side_by_side"):
    lines += format_comparison(m["side_by_side"])
  extras = [f"{line}." for line in _other_lines(m, number)]
  if extras:
    lines += ["## Other", ""] + extras + [""]
  if figures:
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
  return "\n".join(lines)


def _header(m: Mapping, title: str) -> list[str]:
  boot = m.get("bootstrap", {})
  lines = [f"# {title}", ""]
  meta = [f"{k}: {m[k]}" for k in ("dataset", "split", "step", "source") if m.get(k) is not None]
  if meta:
    lines += ["; ".join(meta), ""]
  if m.get("initial_weights"):
    lines += [f"Initial weights: {m['initial_weights']}", ""]
  lines += [(f"{m['n_slices']} slices ({m['n_positive_slices']} with blood) in {m['n_scans']} scans "
            f"({m['n_positive_scans']} with blood). A scan's probability and label are the maximum over its slices "
            f"(seeds 000, 003). Operating threshold {m['threshold']}."), ""]
  if boot.get("n_boot"):
    lines += [(f"AUC 95% CI: percentile bootstrap, {boot['n_boot']} replications (seed 000), stratified by class, "
              f"seed {boot['seed']}; slice-level replicates resample whole studies."), ""]
  else:
    lines += ["AUC 95% CI: not computed (n_boot = 0); DeLong intervals are in metrics.json.", ""]
  return lines


def _detection(m: Mapping) -> list[str]:
  lines = []
  for level, heading in (("scan", "Scan level"), ("slice", "Slice level")):
    rows = []
    for name in LABELS:
      e = m[level][name]
      rows.append([name, f"{e['n_positive']}/{e['n_negative']}", auc_ci(e), number(e["sensitivity"]),
                   number(e["specificity"]), number(e["ppv"]), number(e["npv"]), number(e["accuracy"])])
    lines += [f"## {heading}: detection per class", ""]
    lines += md_table(["Class", "n+/n−", "AUC [95% CI]", "Sensitivity", "Specificity", "PPV", "NPV", "Accuracy"],
                      rows)
    lines += ["", f"Weighted log-loss (RSNA 2019, any ×2): {number(m[level]['weighted_log_loss'])}", ""]
  return lines


def _strata(strata: Mapping) -> list[str]:
  lines = []
  for level in ("scan", "slice"):
    lines += [f"## {level.capitalize()} level by hemorrhage type and size", "",
              "Positives of the row against every hemorrhage-free " + level + " (seed 001, Table 2). "
              "Size bins by the study's total blood volume: punctate < 0.01, small 0.01–5, medium 5–25, "
              "large > 25 mL.", ""]
    rows = []
    for name, entry in strata[level].items():
      for row, e in entry.items():
        if row != "all" and e["n_positive"] == 0:
          continue
        rows.append([name if row == "all" else "", "All" if row == "all" else row.capitalize(),
                     str(e["n_positive"]), number(e["auc"]), number(e["sensitivity"]), number(e["specificity"]),
                     number(e["ppv"]), number(e["npv"]), number(e["accuracy"])])
    lines += md_table(["Hemorrhage", "Size", "n+", "AUC", "Sensitivity", "Specificity", "PPV", "NPV",
                       "Accuracy"], rows) + [""]
  return lines


def _threshold_sweep(sweep: Mapping) -> list[str]:
  lines = ["## Threshold sweep, any hemorrhage", "", "As seed 002, Table 6.", ""]
  for level in ("slice", "scan"):
    rows = [[f"{r['threshold']:.1f}", percent(r["sensitivity"]), percent(r["specificity"]), percent(r["accuracy"]),
             percent(r["ppv"]), percent(r["npv"])] for r in sweep[level]]
    lines += [f"{level.capitalize()} level:", ""]
    lines += md_table(["Threshold", "Sensitivity (%)", "Specificity (%)", "Accuracy (%)", "PPV (%)", "NPV (%)"],
                      rows) + [""]
  return lines


def _comparison(c: Mapping) -> list[str]:
  lines = [f"## Comparison: {c['name_a']} vs {c['name_b']} (DeLong test, two-sided)", ""]
  for level in ("scan", "slice"):
    rows = [[name, number(e["auc_a"]), number(e["auc_b"]),
             MISSING if is_missing(e["auc_a"]) else f"{e['auc_a'] - e['auc_b']:+.3f}", number(e["z"], ".2f"),
             p_value(e["p_value"])] for name, e in c[level].items()]
    lines += [f"{level.capitalize()} level:", ""]
    lines += md_table(["Class", f"AUC {c['name_a']}", f"AUC {c['name_b']}", "Difference", "z", "p"], rows) + [""]
  return lines + ["Slice-level p-values treat slices as independent; quote the scan level.", ""]


def _volumes(v: Mapping) -> list[str]:
  lines = ["## Volume", "", (f"{v['n_series_with_blood']} series with blood; reference = {v['reference']}. "
           "ABC/2 on the reference mask's largest slice (A, B) and its number of slices with blood (C). "
           "Error = estimate − reference; relative error averaged per series."), ""]
  rows = []
  for key, label in (("abc2", "ABC/2, all blood"), ("abc2_intraparenchymal", "ABC/2, intraparenchymal"),
                     ("predicted", "Predicted mask")):
    if key in v:
      a = v[key]
      rows.append([label, str(a["n"]), number(a["pearson_r"]), number(a["mean_error_ml"], "+.2f"),
                   percent(a["mean_relative_error"], "+.1f"),
                   number(a["mean_abs_error_ml"], ".2f")])
  lines += md_table(["Estimate", "Series", "Pearson r", "Mean error (mL)", "Mean error (%)",
                     "Mean abs. error (mL)"], rows) + [""]
  if "dice" in v:
    rows = [[name, str(e.get("n_series", e.get("n_slices"))), number(e["dice"])] for name, e in v["dice"].items()]
    lines += [("Dice of predicted blood (seed 001 per type: series containing the type; last row: slices with "
              "blood only, seed 002):"), ""]
    lines += md_table(["Hemorrhage", "n", "Dice"], rows) + [""]
  return lines
