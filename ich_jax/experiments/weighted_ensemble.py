"""Seed 000 §2.2: a weighted ensemble of five Inception U-Nets trained on subsets; Tables 3 and 4, difficult cases.

The stages, under the workdir W; each a loop run of the config without its `experiment` section (the base),
with the steps and overrides of `experiment.stages.<name>` (configs/weighted_ensemble.py):

  pretrain_encoder          the U-Net's encoder under a subtype head (`experiment.templates.pretrain`, the task
                            replaced): Model 2's pre-training
  model1_all … model5_small the five base U-Nets (train, export: their maps become the weight models' data);
                            model2_pretrained starts from pretrain_encoder's encoder (`model.init_from`)
  oof/<stage>/fold<k>       with `experiment.weight_maps = "out_of_fold"` (the default), k < `map_folds`: the
                            pre-training and each base model again, trained on the training split's studies
                            outside fold k (`train[fold!=k/K]`, ich_jax.data.folds), exporting fold k's maps
  oof/<base>                the out-of-fold assembly: <base>/export/<train split> from the K fold exports,
                            each slice's map from the fold model that did not see it (ich_jax.data.stacking)
  ensemble_basic … _all     the weight model (`experiment.templates.weights`, model and task replaced) on the
                            maps of models 1+2, 1+2+3, 1+2+4, 1+2+5 and 1–5 (`dataset.exports`; train, eval)
  report                    W/report.md, W/tables.json, W/difficult_cases.csv (ich_jax.eval.ensemble_tables)

Which maps train the weight model (`experiment.weight_maps`; seed 000 §2.2.3 does not say): "out_of_fold"
(default) trains it on maps of its training slices from base models that never saw those slices, as seed
003's stacking does (ich_jax.data.stacking), so it learns how far to trust each base model on new scans;
the base models' maps of their own training slices are better than any they make on the held-out split.
The held-out split's maps come from the base models trained on the whole training split in either mode,
so the weight model evaluates, and the bundle predicts, with the same five U-Nets. "in_sample" (no fold
models: a sixth of the training) trains it on the full base models' maps of their own training slices.

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
from ich_jax.data import folds, pipeline, stacking, stage_exports
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
WEIGHT_MAPS = ("out_of_fold", "in_sample")   # experiment.weight_maps: see the module docstring
OOF = "oof"              # W/oof/<stage>/fold<k>: the fold models; W/oof/<base>: the assembly


def fold_stage(name: str, fold: int) -> str:
  return f"{OOF}/{name}/fold{fold}"


def oof_stage(name: str) -> str:
  return f"{OOF}/{name}"


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
  mode = e.get("weight_maps", "out_of_fold")
  if mode not in WEIGHT_MAPS:
    raise ValueError(f"config experiment.weight_maps={mode!r}; expected one of {WEIGHT_MAPS}")
  train_split, eval_split = config.dataset.train_split, config.dataset.eval_split
  k_folds = int(e.get("map_folds", 5)) if mode == "out_of_fold" else 0
  if k_folds and folds.parse_split(train_split)[1] is not None:
    raise ValueError(f"config dataset.train_split={train_split!r}: the out-of-fold maps make their own folds of a "
                     "plain split (or set experiment.weight_maps='in_sample')")

  def run(name: str, template=None, replace=(), links=(), after=(), fold=None) -> Stage:
    # The template's sections, then the stage's own overrides, over the base (`replace`: sections swapped
    # whole); last the folders of the stages it reads. A fold model trains on the studies outside fold k and
    # exports fold k; with folds, the full base model exports only the held-out split (its training maps
    # would be in-sample).
    sections = [template] if template is not None else []
    sections.append(e.stages[name].get("overrides", {}))
    if fold is not None:
      train, held_out = folds.fold_split_names(k_folds, fold, train_split)
      sections.append({"dataset": {"train_split": train}, "export": {"splits": [held_out]}})
    elif k_folds and "export" in e.stages[name].steps:
      sections.append({"export": {"splits": [eval_split]}})
    cfg = stage_configs.derive(base, *sections, replace=replace)
    for path, value in links:
      stage_configs.set_path(cfg, path, value)
    return Stage(name if fold is None else fold_stage(name, fold), ConfigDict(cfg),
                 steps=tuple(e.stages[name].steps), after=tuple(after))

  def folder(name: str) -> str:
    return str((root / name).absolute())

  def pretrained(fold=None) -> Stage:
    pre = PRETRAIN if fold is None else fold_stage(PRETRAIN, fold)
    return run(PRETRAINED, links=[("model.init_from", folder(pre))], after=[pre], fold=fold)

  planned = [run(PRETRAIN, e.templates.pretrain, replace=("task",))]
  planned += [pretrained() if name == PRETRAINED else run(name) for name in BASES]
  # Out of fold: every fold's own pre-training, so no fold's Model 2 starts from an encoder that saw its slices.
  planned += [run(PRETRAIN, e.templates.pretrain, replace=("task",), fold=k) for k in range(k_folds)]
  for name in BASES if k_folds else ():
    fold_runs = [pretrained(k) if name == PRETRAINED else run(name, fold=k) for k in range(k_folds)]
    planned += fold_runs
    planned.append(Stage(oof_stage(name), fn=functools.partial(
        assemble_out_of_fold, fold_dirs=[root / s.name for s in fold_runs], target=root / name,
        dataset=config.dataset), params={"folds": k_folds, "target": name, "train_split": train_split},
        after=tuple(s.name for s in fold_runs) + (name,)))
  planned += [run(name, e.templates.weights, replace=("task", "model"),
                  links=[("dataset.exports", tuple(folder(m) for m in members))],
                  after=members + (tuple(oof_stage(m) for m in members) if k_folds else ()))
              for name, members in ENSEMBLES]
  dirs = {s.name: root / s.name for s in planned}
  return planned + [Stage("report", fn=functools.partial(write_report, root=root, config=config, stage_dirs=dirs),
                          params={"stages": sorted(dirs), "classifiers": classifier_dirs(config)},
                          after=tuple(dirs), always=True)]


def assemble_out_of_fold(workdir: pathlib.Path, *, fold_dirs, target: pathlib.Path, dataset) -> pathlib.Path:
  """`target`/export/<train split>: the fold models' exports of their held-out folds as one export of the whole
  training split, record_index numbering the split's records (what the weight model's data joins maps by)."""
  train_split = dataset.train_split
  k = len(fold_dirs)
  held_out = [stage_exports.export_dir(d, folds.fold_split_names(k, i, train_split)[1])
              for i, d in enumerate(fold_dirs)]
  ids = pipeline.open_split(dataset, train_split).metadata(("series_id", "slice_index"))
  out = stacking.out_of_fold(held_out, stage_exports.export_dir(target, train_split),
                             meta={"assembled_by": str(workdir.absolute())},
                             records=(ids["series_id"], ids["slice_index"]))
  print(f"Out-of-fold maps of {train_split} from {k} fold models: {out}", flush=True)
  return out


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
