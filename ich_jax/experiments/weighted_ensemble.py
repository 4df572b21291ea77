"""Seed 000 §2.2: a weighted ensemble of five Inception U-Nets trained on subsets; Tables 3 and 4, difficult cases.

The stages, under the workdir W; each a loop run of the config without its `experiment` section (the base),
with the steps and overrides of `experiment.stages.<name>` (configs/weighted_ensemble.py):

  pretrain_encoder          the U-Net's encoder under a subtype head (`experiment.templates.pretrain`, the task
                            replaced): Model 2's pre-training
  model1_all … model5_small the five base U-Nets (train, export: their maps become the weight models' data);
                            model2_pretrained starts from pretrain_encoder's encoder (`model.init_from`)
  ensemble_basic … _all     the weight model (`experiment.templates.weights`, model and task replaced) on the
                            maps of models 1+2, 1+2+3, 1+2+4, 1+2+5 and 1–5 (`dataset.exports`; train, eval)
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

from ml_collections import ConfigDict

from ich_jax import atomic
from ich_jax.eval import ensemble_tables as T
from ich_jax.eval import report as R
from ich_jax.experiments import stage_configs, strong_vs_weak
from ich_jax.experiments.runner import Stage

PRETRAIN = "pretrain_encoder"
BASES = ("model1_all", "model2_pretrained", "model3_sdh", "model4_sah", "model5_small")
PRETRAINED = "model2_pretrained"   # Model 2 (§2.2.2): its encoder starts as pretrain_encoder's
# The weight models (§2.2.3, Table 3's rows): stage → the base models whose maps it weighs.
ENSEMBLES = (("ensemble_basic", BASES[:2]), ("ensemble_sdh", BASES[:3]), ("ensemble_sah", BASES[:2] + BASES[3:4]),
             ("ensemble_small", BASES[:2] + BASES[4:]), ("ensemble_all", BASES))
FINAL = "ensemble_all"   # the weight model on all five base models: the paper's final ensemble


def classifier_dirs(config) -> dict[str, pathlib.Path]:
  """backbone → the strong-annotation run of the strong-vs-weak experiment that Table 4 reads (none without
  `config.experiment.strong_vs_weak`)."""
  e = config.experiment
  if not e.strong_vs_weak:
    return {}
  return {b: strong_vs_weak.run_dir(e.strong_vs_weak, b, "strong") for b in e.classifiers}


def stages(config, root: pathlib.Path) -> list[Stage]:
  e = config.experiment
  base = stage_configs.base_config(config)

  def run(name: str, template=None, replace=(), links=(), after=()) -> Stage:
    # The template's sections, then the stage's own overrides, over the base (`replace`: sections swapped
    # whole); last the folders of the stages it reads.
    cfg = stage_configs.derive(base, *([template] if template is not None else []),
                               e.stages[name].get("overrides", {}), replace=replace)
    for path, value in links:
      stage_configs.set_path(cfg, path, value)
    return Stage(name, ConfigDict(cfg), steps=tuple(e.stages[name].steps), after=tuple(after))

  def folder(name: str) -> str:
    return str((root / name).absolute())

  planned = [run(PRETRAIN, e.templates.pretrain, replace=("task",))]
  planned += [run(name, links=[("model.init_from", folder(PRETRAIN))], after=[PRETRAIN]) if name == PRETRAINED
              else run(name) for name in BASES]
  planned += [run(name, e.templates.weights, replace=("task", "model"),
                  links=[("dataset.exports", tuple(folder(m) for m in members))], after=members)
              for name, members in ENSEMBLES]
  dirs = {s.name: root / s.name for s in planned}
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
