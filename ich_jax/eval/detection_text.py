"""The markdown of a detector's evaluation: seed 001's Table 2, FROC, box AP and volumes per class.

Reads what `ich_jax.eval.detection.detection_metrics` computed (or its metrics.json, where NaN is null);
numbers print through `ich_jax.eval.formatting`, so a missing one reads "n/a" (seed 001 prints NA).
"""
from __future__ import annotations

from collections.abc import Mapping

from ich_jax.eval.formatting import auc_ci, md_table, number

_TABLE2_HEADER = ["Hemorrhage", "Size", "n+/n−", "Accuracy", "AUC", "Sensitivity", "Specificity", "PPV", "NPV"]


def _stats(e: Mapping, auc: str) -> list[str]:
  return [f"{e['n_positive']}/{e['n_negative']}", number(e["accuracy"]), auc, number(e["sensitivity"]),
          number(e["specificity"]), number(e["ppv"]), number(e["npv"])]


def _rows(table: Mapping) -> list[list[str]]:
  return [[name if row == "all" else "", "All" if row == "all" else row.capitalize(), *_stats(e, number(e["auc"]))]
          for name, entry in table.items() for row, e in entry.items()]


_SIZES = "Size by the class's volume in the study: punctate < 0.01, small 0.01–5, medium 5–25, large > 25 mL."


def _table2(t: Mapping) -> list[str]:
  b = t["balanced"]
  lines = []
  if t.get("published"):
    lines += ["## Seed 001 Table 2 (as published: each row on its own balanced set)", "",
              (f"Each row: its studies with blood and as many without, drawn from the {t['n_studies']} studies in "
               f"one fixed order (seed {t['seed']}), so PPV and NPV are at 50 % prevalence, as in the paper. "
               f"Rows: seed 001's IPH, EDH/SDH and SAH, and IVH. Reference: {t['reference']}. A study's score is "
               f"its highest slice probability for the row's subtypes; threshold {t['threshold']}. {_SIZES}"), ""]
    lines += md_table(_TABLE2_HEADER, _rows(t["published"]["rows"])) + [""]
  lines += ["## Seed 001 Table 2, all negatives: one balanced set, each row against all its negatives", "",
            (f"{b['n_positive']} studies with blood and {b['n_negative']} without, drawn from {t['n_studies']} "
             f"(seed {t['seed']}); reference: {t['reference']}. A study's score is its highest slice probability "
             f"for the class; threshold {t['threshold']}. Each row: its positives against every study of the set "
             f"without blood (PPV and NPV at the row's own prevalence). Rows: the detector's classes. {_SIZES}"),
            ""]
  lines += md_table(_TABLE2_HEADER, _rows(b["rows"])) + [""]
  all_rows = [["Balanced set", *_stats(b["rows"]["All ICH"]["all"], auc_ci(b["rows"]["All ICH"]["all"]))],
              ["Full set", *_stats(t["full"]["All ICH"], auc_ci(t["full"]["All ICH"]))]]
  lines += [f"All ICH with AUC 95% CI (percentile bootstrap, {t['n_boot']} replications, stratified):", ""]
  lines += md_table(["Studies", "n+/n−", "Accuracy", "AUC [95% CI]", "Sensitivity", "Specificity", "PPV", "NPV"],
                    all_rows) + [""]
  return lines


def _froc(f: Mapping, title: str) -> list[str]:
  lines = [f"## {title}", "",
           (f"Class-agnostic; {f['n_lesions']} reference lesions ({f['source']}) in {f['n_scans']} scans. A "
            f"lesion is hit by a detection on its slice with {f['hit_rule']}; a detection hitting no lesion is "
            "a false positive. CPM = mean sensitivity over the rates."), ""]
  header = ["FP per scan"] + [format(r, "g") for r in f["fp_rates"]] + ["CPM"]
  row = ["Sensitivity"] + [number(s) for s in f["sensitivity"]] + [number(f["mean_sensitivity"])]
  return lines + md_table(header, [row]) + [""]


def _box_ap(a: Mapping) -> list[str]:
  rows = [[name, str(n), number(a[name])] for name, n in a["n_reference"].items()]
  return ([f"## Box AP at IoU {a['iou_threshold']:g}", "",
           "Per slice; detections pooled in score order, matched greedily; all-point interpolated AP (VOC).", ""]
          + md_table(["Class", "Reference instances", "AP"], rows) + [""])


def _volumes(v: Mapping) -> list[str]:
  rows = [[name, str(e["n"]), number(e["pearson_r"]), number(e["mean_error_ml"], "+.2f"), number(e["dice"])]
          for name, e in v["classes"].items()]
  lines = ["## Volumes per class", "",
           (f"{v['n_series']} series; per class, the series whose reference holds it. Error = predicted − "
            "reference; Dice of the class's 3D masks."), ""]
  lines += md_table(["Class", "n", "Pearson r", "Mean signed error (mL)", "Dice"], rows) + [""]
  big = v["largest_iph"]
  line = (f"Largest IPH ({big['n']} series): ABC/2 r {number(big['abc2']['pearson_r'])}, mean error "
          f"{number(big['abc2']['mean_error_ml'], '+.2f')} mL")
  if big.get("predicted"):
    line += (f"; predicted IPH r {number(big['predicted']['pearson_r'])}, mean error "
             f"{number(big['predicted']['mean_error_ml'], '+.2f')} mL")
  return lines + [line + " (seed 001: ABC/2 r 0.954, CNN 0.999).", ""]


def format_detection(m: Mapping) -> str:
  """The markdown sections of `detection_metrics`' result; sections it left as None are omitted."""
  lines = [f"Classes: {', '.join(m['classes'])}.", ""] + _table2(m["table2"])
  for key, title in (("froc", "FROC"), ("froc_bhx", "FROC, CQ500 BHX boxes")):
    if m.get(key):
      lines += _froc(m[key], title)
  if m.get("box_ap"):
    lines += _box_ap(m["box_ap"])
  if m.get("volumes"):
    lines += _volumes(m["volumes"])
  return "\n".join(lines)
