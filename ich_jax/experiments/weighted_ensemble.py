"""Seed 000 §2.2: a weighted ensemble of five Inception U-Nets trained on subsets; Tables 3 and 4, difficult cases.

The stages are spelled out in the config (configs/weighted_ensemble.py, `runner.planned_stages`); under the
workdir W:

  pretrain_encoder          the U-Net's encoder under a subtype head: Model 2's pre-training
  model1_all … model5_small the five base U-Nets (train, export: their maps become the weight models' data)
  ensemble_basic … _all     the weight model on the maps of models 1+2, 1+2+3, 1+2+4, 1+2+5 and 1–5 (train, eval)
  report                    W/report.md, W/tables.json, W/difficult_cases.csv (ich_jax.eval.ensemble_tables)

Table 4 compares the final ensemble with the strong-annotation classifiers of
the strong-vs-weak experiment (configs/strong_vs_weak.py), read from its
workdir `config.experiment.strong_vs_weak`: `<that>/<backbone>/strong/
predictions.csv` for each of `config.experiment.classifiers`
(`strong_vs_weak.run_dir`). Those runs may finish after this experiment, so the
report stage runs on every invocation; a classifier not run yet is listed so.
"""
from __future__ import annotations

import csv
import functools
import pathlib

from ich_jax import atomic
from ich_jax.eval import ensemble_tables as T
from ich_jax.eval import report as R
from ich_jax.experiments import runner, strong_vs_weak
from ich_jax.experiments.runner import Stage

FINAL = "ensemble_all"   # the weight model on all five base models: the paper's final ensemble


def classifier_dirs(config) -> dict[str, pathlib.Path]:
  """backbone → the strong-annotation run of the strong-vs-weak experiment that Table 4 reads (none without
  `config.experiment.strong_vs_weak`)."""
  e = config.experiment
  if not e.strong_vs_weak:
    return {}
  return {b: strong_vs_weak.run_dir(e.strong_vs_weak, b, "strong") for b in e.classifiers}


def stages(config, root: pathlib.Path) -> list[Stage]:
  planned = runner.planned_stages(config, root)
  dirs = {s.name: root / s.name for s in planned}
  if FINAL not in dirs:
    raise KeyError(f"config experiment.order has no stage {FINAL!r}, the final ensemble Table 4 compares")
  return planned + [Stage("report", fn=functools.partial(write_report, root=root, config=config, stage_dirs=dirs),
                          params={"stages": sorted(dirs), "classifiers": classifier_dirs(config)},
                          after=tuple(dirs), always=True)]


def write_report(workdir: pathlib.Path, *, root: pathlib.Path, config, stage_dirs) -> str:
  """W/report.md, W/tables.json and W/difficult_cases.csv from the stages' predictions; returns the report."""
  exp = config.experiment
  rows = {}
  for label, stage in exp.table3:
    preds = T.load(stage_dirs[stage]) if stage in stage_dirs else None
    rows[label] = None if preds is None else T.scan_table(preds)
  n_boot, seed = int(config.eval.get("n_boot", 500)), int(config.eval.get("bootstrap_seed", 0))
  basic = exp.table3[0][0]
  t = {"table3": T.table3(rows, basic, float(config.data.small_bleed_ml), n_boot, seed)}
  final_label = [label for label, stage in exp.table3 if stage == FINAL][0]
  final = rows[final_label]
  t["table4"] = {} if final is None else T.table4(final, {b: str(d) for b, d in classifier_dirs(config).items()},
                                                  n_boot, seed, float(config.eval.threshold))
  t["difficult"] = [] if final is None else T.difficult(final)
  R.write_metrics(t, root / "tables.json")
  with atomic.open_write(root / "difficult_cases.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["study_id", "any", "prob_any", "subtypes", "blood_ml"])
    w.writeheader()
    w.writerows(t["difficult"])
  meta = (f"Dataset {config.dataset.name}/{config.dataset.config}, held-out split {config.dataset.eval_split}; "
          f"final ensemble: {final_label}. A scan's probability is its most probable slice's, a slice's its "
          f"most probable pixel of the weighted map (seed 000 §2.2.4).")
  text = T.format_markdown(t, title="Seed 000: weighted ensemble of five Inception U-Nets", meta=meta)
  R.write_text(root / "report.md", text)
  print(f"Report: {root / 'report.md'}", flush=True)
  return text
