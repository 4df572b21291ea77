"""Seed 003 (RSNA 2019 1st place): 2D CNN → sequence model 1 → sequence model 2, three backbones, ensemble.

The stages under the workdir W, per backbone B (config.experiment.backbones):

  B/cnn_fold{k}     stage 1, k = 0 … K-1: the 2D CNN trained on folds != k of the training split (by study),
                    exporting per-slice pooled features and probabilities of fold k and of the evaluated split
  B/cnn             out-of-fold training export (fold k's slices from the model that did not see them) and
                    the evaluated split's mean over the K fold models; evaluation: predictions.csv,
                    report.md (and oof/ for the cross-validated training split). Written once: no later
                    stage reruns a CNN
  B/seq1_fold{j}    stage 2, j = 0 … J-1: seq_gru_1 on B/cnn's features, folds != j; exports fold j, eval split
  B/seq1            its out-of-fold and mean-over-folds exports, evaluated ("2D-CNN + Seq_model 1")
  B/seq2_fold{j}    stage 3: seq_gru_2 on B/cnn's and B/seq1's probabilities + the slice gap
  B/seq2            the same ("2D-CNN + Seq_model 1 + Seq_model 2")
  ensemble          the unweighted mean of the backbones' B/seq2 probabilities (seed 003 §3), evaluated
  report            W/report.md and W/metrics.json: Table 3 (weighted log-loss, AUC(any) with CI,
                    sensitivity, specificity per stage, slice and scan level) and Table 4 (per class)

Every row of the tables is read from that stage's metrics.json, computed from
its predictions.csv (`report.write_evaluation`). The test split's stage-1
input to the sequence models is the mean over the K fold CNNs of features and
probabilities (ich_jax.data.stacking); each sequence stage's test output is
the mean over its J fold models, as the public code averages its 10 folds.

Each combined stage (B/cnn, B/seq1, B/seq2, ensemble) also records in
`combined.json` which run folders it is the mean of on new data (`MEAN_RECORD`),
so `python -m ich_jax.bundle export --run W` (or W/B/seq2, ...) writes the
whole cascade as one bundle: per backbone its K CNNs and 2·J sequence models,
and the means between them (ich_jax.bundle.export).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib

from ich_jax import LABELS, atomic
from ich_jax.data import folds, stacking, stage_exports
from ich_jax.eval import report
from ich_jax.eval.formatting import auc_ci, md_table, number
from ich_jax.experiments import external
from ich_jax.experiments.runner import Stage
from ich_jax.experiments.stage_configs import stage_config

FINAL = "ensemble"
# A combined stage's record of the runs it averages on new data (what a bundle of it computes).
MEAN_RECORD = "combined.json"
SEQUENCE_STAGES = ("seq1", "seq2")
ROW_NAMES = {"cnn": "2D-CNN", "seq1": "2D-CNN + Seq_model 1", "seq2": "2D-CNN + Seq_model 1 + Seq_model 2"}


def cnn_config(config, backbone: str, fold: int):
  """Stage 1 of `backbone`, fold `fold` of `experiment.cnn_folds`: train on the other folds, export this one."""
  n = int(config.experiment.cnn_folds)
  train, held_out = folds.fold_split_names(n, fold, config.dataset.train_split)
  c = stage_config(config.cnn, config.dataset, config.seed, model=config.backbones[backbone], train_split=train,
                   eval_split=held_out)
  with c.unlocked():
    c.export = {"splits": [held_out, config.dataset.eval_split]}
  external.export_stage_config(c, external.sets(config))
  return c


def sequence_config(config, backbone: str, stage: str, fold: int, root: pathlib.Path):
  """Stage 2 (`seq1`) or 3 (`seq2`) of `backbone`, fold `fold` of `experiment.sequence_folds`."""
  n = int(config.experiment.sequence_folds)
  train, held_out = folds.fold_split_names(n, fold, config.dataset.train_split)
  exports = [str(root / backbone / "cnn")] + ([str(root / backbone / "seq1")] if stage == "seq2" else [])
  c = stage_config(config[stage], config.dataset, config.seed, kind="series_features", exports=tuple(exports),
                   train_split=train, eval_split=held_out)
  with c.unlocked():
    c.export = {"splits": [held_out, config.dataset.eval_split]}
  external.export_stage_config(c, external.sets(config))
  return c


def _fold_dirs(root: pathlib.Path, prefix: str, n: int) -> list[pathlib.Path]:
  return [root / f"{prefix}_fold{k}" for k in range(n)]


def combine_folds(workdir: pathlib.Path, *, fold_dirs, train_split: str, eval_split: str, eval_config, dataset: str,
                  title: str, test_sets=()) -> None:
  """A K-fold stage's outputs as one stage: out-of-fold training export, mean-over-folds eval export, evaluated."""
  n = len(fold_dirs)
  held_out = [stage_exports.export_dir(d, folds.fold_split_names(n, k, train_split)[1])
              for k, d in enumerate(fold_dirs)]
  stacking.out_of_fold(held_out, stage_exports.export_dir(workdir, train_split))
  stacking.mean_over_models([stage_exports.export_dir(d, eval_split) for d in fold_dirs],
                            stage_exports.export_dir(workdir, eval_split))
  evaluate_exports(workdir, train_split=train_split, eval_split=eval_split, eval_config=eval_config,
                   dataset=dataset, title=title, what=f"mean over {n} fold models")
  external.combine(workdir, fold_dirs, test_sets)
  write_mean_record(workdir, fold_dirs, eval_config.threshold)


def ensemble(workdir: pathlib.Path, *, stage_dirs, train_split: str, eval_split: str, eval_config, dataset: str,
             title: str, test_sets=()) -> None:
  """Seed 003 §3: "the unweighted average of probabilities predicted by the three different models"."""
  for split in (train_split, eval_split):
    stacking.mean_over_models([stage_exports.export_dir(d, split) for d in stage_dirs],
                              stage_exports.export_dir(workdir, split))
  evaluate_exports(workdir, train_split=train_split, eval_split=eval_split, eval_config=eval_config,
                   dataset=dataset, title=title, what=f"mean over {len(stage_dirs)} backbones")
  external.combine(workdir, stage_dirs, test_sets)
  write_mean_record(workdir, stage_dirs, eval_config.threshold)


def write_mean_record(workdir: pathlib.Path, parts, threshold: float) -> None:
  """`workdir/combined.json`: on the evaluated split (and so on a new study) this stage is the mean over the
  models of the run folders `parts` (paths relative to workdir: the workdir may move), at `threshold`."""
  record = {"combine": "mean", "parts": [pathlib.Path(os.path.relpath(p, workdir)).as_posix() for p in parts],
            "threshold": float(threshold)}
  atomic.write_text(workdir / MEAN_RECORD, json.dumps(record, indent=2))


def read_mean_record(workdir) -> dict | None:
  """A combined stage's record ({"parts": [run folders], "threshold"}), or None where `workdir` has none."""
  path = pathlib.Path(workdir) / MEAN_RECORD
  if not path.is_file():
    return None
  record = json.loads(path.read_text())
  parts = record.get("parts")
  if record.get("combine") != "mean" or not isinstance(parts, list) or not parts \
      or not all(isinstance(p, str) and p for p in parts):
    raise ValueError(f"{path}: expected combine \"mean\" and parts, a list of run folders; got "
                     f"combine={record.get('combine')!r}, parts={parts!r}")
  return {"parts": [pathlib.Path(os.path.normpath(pathlib.Path(workdir) / p)) for p in parts],
          "threshold": float(record["threshold"])}


def evaluate_exports(workdir: pathlib.Path, *, train_split, eval_split, eval_config, dataset, title, what) -> None:
  """The standard evaluation of a combined stage: its eval split in workdir, its out-of-fold training split in oof/."""
  for split, out, label in ((eval_split, workdir, what), (train_split, workdir / "oof", "out of fold")):
    out.mkdir(parents=True, exist_ok=True)
    rows = stacking.evaluation_rows(stage_exports.read_export(stage_exports.export_dir(workdir, split)))
    report.write_evaluation(rows, out, eval_config, title=f"{title}: {split} ({label})",
                              meta={"split": split, "dataset": dataset, "source": label}, quiet=True)


def stages(config, root: pathlib.Path) -> list[Stage]:
  e = config.experiment
  backbones = list(e.backbones)
  missing = [b for b in backbones if b not in config.backbones]
  if missing:
    raise KeyError(f"config experiment.backbones names {missing}, which config.backbones does not define "
                   f"(it has {sorted(config.backbones)})")
  train_split, eval_split = config.dataset.train_split, config.dataset.eval_split
  if folds.parse_split(train_split)[1] is not None:
    raise ValueError(f"config dataset.train_split={train_split!r}: the cascade makes its own folds of a plain split")
  dataset = f"{config.dataset.name}/{config.dataset.config}"
  common = {"train_split": train_split, "eval_split": eval_split, "eval_config": config.eval, "dataset": dataset}
  # Combined stages mean each external set's exports too (their fold stages' configs carry the sets).
  test_sets = {"test_sets": external.sets(config)}
  out = []
  for b in backbones:
    k, j = int(e.cnn_folds), int(e.sequence_folds)
    cnn_folds = [Stage(f"{b}/cnn_fold{i}", cnn_config(config, b, i), steps=("train", "export")) for i in range(k)]
    out += cnn_folds
    out.append(Stage(f"{b}/cnn", fn=functools.partial(combine_folds, fold_dirs=_fold_dirs(root / b, "cnn", k),
                                                      title=f"{b}: {ROW_NAMES['cnn']}", **common, **test_sets),
                     params={"folds": k, **common}, after=tuple(s.name for s in cnn_folds)))
    for stage in SEQUENCE_STAGES:
      reads = (f"{b}/cnn",) + ((f"{b}/seq1",) if stage == "seq2" else ())
      seq_folds = [Stage(f"{b}/{stage}_fold{i}", sequence_config(config, b, stage, i, root), steps=("train", "export"),
                         after=reads) for i in range(j)]
      out += seq_folds
      out.append(Stage(f"{b}/{stage}", fn=functools.partial(combine_folds,
                                                            fold_dirs=_fold_dirs(root / b, stage, j),
                                                            title=f"{b}: {ROW_NAMES[stage]}", **common,
                                                            **test_sets),
                       params={"folds": j, **common}, after=tuple(s.name for s in seq_folds)))
  finals = [f"{b}/seq2" for b in backbones]
  out.append(Stage(FINAL, fn=functools.partial(ensemble, stage_dirs=[root / f for f in finals],
                                               title="Ensemble of " + ", ".join(backbones), **common, **test_sets),
                   params={"backbones": backbones, **common}, after=tuple(finals)))
  rows = [(b, s) for b in backbones for s in ("cnn",) + SEQUENCE_STAGES]
  out.append(Stage("report", fn=functools.partial(write_report, root=root, rows=rows, config=config),
                   params={"rows": rows}, after=tuple(f"{b}/{s}" for b, s in rows) + (FINAL,)))
  # Seed 003 Table 4's external columns (PhysioNet-ICH, CQ500): every stage's model on each set.
  models = {f"{b}: {ROW_NAMES[s]}": f"{b}/{s}" for b, s in rows}
  models["Model_ensemble"] = FINAL
  out += external.stage(config, root, models, pairs={m: "Model_ensemble" for m in models if m != "Model_ensemble"},
                        table_model="Model_ensemble", after=tuple(models.values()))
  return out


# --- The report: seed 003 Tables 3 and 4 ------------------------------------------------------


def table_rows(root: pathlib.Path, rows) -> list[tuple[str, str, dict]]:
  """(backbone, row label, metrics) for every stage of Table 3, the ensemble last."""
  out = [(b, ROW_NAMES[s], report.read_metrics(root / b / s)) for b, s in rows]
  return out + [("all", "Model_ensemble", report.read_metrics(root / FINAL))]


def write_report(workdir: pathlib.Path, *, root: pathlib.Path, rows, config) -> None:
  """W/report.md and W/metrics.json from the stages' evaluations (each a metrics.json of its predictions.csv)."""
  entries = table_rows(root, rows)
  m0 = entries[-1][2]
  lines = ["# Seed 003 cascade: RSNA 2019 1st place (2D CNN → Seq_model 1 → Seq_model 2 → ensemble)", "",
           (f"Dataset {m0.get('dataset')}, evaluated on split {m0.get('split')!r}: {m0['n_slices']} slices "
            f"({m0['n_positive_slices']} with blood), {m0['n_scans']} scans ({m0['n_positive_scans']} with blood). "
            f"Stage 1: {config.experiment.cnn_folds}-fold CNNs by study; stages 2–3: "
            f"{config.experiment.sequence_folds}-fold sequence models. Each row is the stage's own evaluation "
            f"(its folder's predictions.csv and report.md): the mean over its fold models on the evaluated split. "
            f"Sensitivity and specificity of any hemorrhage at threshold {m0['threshold']}; a scan's probability "
            f"is its maximum slice's."), ""]
  backbone_names = {b: f"{b} ({config.backbones[b].name})" if config.backbones[b].name != b else b
                    for b in config.experiment.backbones}
  summary = {"table3": {}, "table4": {}}
  for level in ("slice", "scan"):
    body = []
    for b, label, m in entries:
      e = m[level]["any"]
      body.append([backbone_names.get(b, b), label, number(m[level]["weighted_log_loss"]), auc_ci(e),
                   number(e["specificity"]), number(e["sensitivity"])])
      summary["table3"].setdefault(level, []).append(
          {"backbone": b, "row": label, "weighted_log_loss": m[level]["weighted_log_loss"], "auc_any": e["auc"],
           "auc_any_ci": e["auc_ci"], "specificity_any": e["specificity"], "sensitivity_any": e["sensitivity"]})
    lines += [f"## Table 3, {level} level: performance at each stage", ""]
    lines += md_table(["Backbone", "Model", "Log_loss", "AUC(any) [95% CI]", "Specificity", "Sensitivity"],
                      body) + [""]
  for level in ("slice", "scan"):
    m = entries[-1][2]
    body = [[name, auc_ci(m[level][name]), number(m[level][name]["specificity"]),
             number(m[level][name]["sensitivity"]), f"{m[level][name]['n_positive']}/{m[level][name]['n_negative']}"]
            for name in LABELS]
    summary["table4"][level] = {name: {k: m[level][name][k] for k in ("auc", "auc_ci", "specificity", "sensitivity")}
                                for name in LABELS}
    lines += [f"## Table 4, {level} level: the ensemble per class", ""]
    lines += md_table(["Class", "AUC [95% CI]", "Specificity", "Sensitivity", "n+/n−"], body) + [""]
  lines += ["## AUC per class at every stage (scan level)", ""]
  lines += md_table(["Backbone", "Model"] + list(LABELS),
                    [[backbone_names.get(b, b), label] + [number(m["scan"][n]["auc"]) for n in LABELS]
                     for b, label, m in entries]) + [""]
  lines += ["Out-of-fold (cross-validated) evaluations of the training split are in each stage's oof/ folder.", ""]
  summary["stages"] = [f"{b}/{s}" for b, s in rows] + [FINAL]
  text = "\n".join(lines)
  report.write_text(root / "report.md", text)
  report.write_metrics(summary, root / "metrics.json")
  print(text, flush=True)
