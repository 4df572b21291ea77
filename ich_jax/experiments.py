"""Multi-stage experiments: one config, several runs of the shared training loop, one report.

Seed 000's weighted ensemble trains five base U-Nets (one after a pre-training
run), exports their maps, trains a weight model per combination and tabulates
them; seed 002 runs a threshold baseline and two U-Nets per cross-validation
round. Each stage here is the ordinary loop (`ich_jax.train.loop`) on a config
derived from the experiment's, so there is still one training loop; this
module only derives the configs, runs the steps in order, skips what is done,
and hands the finished stages to a report.

  python launch.py --config configs/weighted_ensemble.py --workdir runs/we     # run (or resume) every stage
  python launch.py --config configs/weighted_ensemble.py --workdir runs/we --mode eval   # the report again

`config.experiment` (the rest of the config is the base every stage starts from):
  report     name of the report writer (`REPORTS`), called with the finished stages; writes report.md
  order      stage names, in run order
  templates  name → overrides shared by several stages (a ConfigDict shaped like the config)
  stages     name → spec:
    steps      what to do, in order: "train", "select_checkpoint", "evaluate", "export",
               "threshold_baseline" (`STEPS`)
    template   a template name, or ""
    overrides  merged over the base after the template (nested ConfigDicts merge key by key)
    replace    config sections (dotted) that the template or overrides replace instead of merging
               (e.g. "task" when a stage trains another task)
    links      ((config path, stage name or names), ...): the path gets those stages' workdirs
               (`model.init_from`, `dataset.exports`); a per-fold stage links to the same fold's
    per_fold   one copy per cross-validation round (`experiment.cv`), with the round's splits
  cv         num_folds, folds (the rounds to run), pool (the splits a dataset without builder folds
             is cross-validated over; `ich_jax.data.datasets.cv_round`)

Workdirs: `<workdir>/<stage>/`, per-fold stages `<workdir>/fold<k>/<stage>/`, each with the
derived config.json (a later stage's `init_from` reads it). A step that finished is recorded in
the stage's `stage.json` with a hash of the stage's config; a rerun skips it, and a rerun whose
config differs from the recorded one stops with an error rather than mixing two experiments in one
workdir (delete the stage folder to redo it). Training resumes from its checkpoints as always.

Relation to a sweep runner (`launch.py --sweep`, a list of config overrides run one after another):
a sweep is this driver with independent stages (no links, one template each) and a collating
report; the two can share `derive` and the done-markers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

from ml_collections import ConfigDict

log = logging.getLogger("ich_jax.experiments")

# name → "module:function" (imported when used, so no work at import time).
STEPS = {
    "train": "ich_jax.experiments:_train",
    "evaluate": "ich_jax.experiments:_evaluate",
    "export": "ich_jax.experiments:_export",
    "select_checkpoint": "ich_jax.experiments:_select_checkpoint",
    "threshold_baseline": "ich_jax.eval.threshold:run_stage",
}
REPORTS = {
    "weighted_ensemble": "ich_jax.eval.ensemble_tables:write",
    "patch_unet": "ich_jax.eval.segmentation_tables:write",
}


@dataclasses.dataclass
class Stage:
  """One derived run: its name, cross-validation round (None: not per fold), workdir, config and steps."""
  name: str
  fold: int | None
  workdir: pathlib.Path
  config: ConfigDict
  steps: tuple[str, ...]

  @property
  def key(self) -> str:
    return self.name if self.fold is None else f"fold{self.fold}/{self.name}"


def _resolve(name: str, table: Mapping[str, str], what: str) -> Callable:
  if name not in table:
    raise KeyError(f"config experiment: unknown {what} {name!r}; known: {', '.join(sorted(table))}")
  module, fn = table[name].split(":")
  return getattr(importlib.import_module(module), fn)


def _plain(c) -> dict:
  return c.to_dict() if isinstance(c, ConfigDict) else dict(c)


def merge(base: dict, overrides: Mapping, replace: Sequence[str] = (), prefix: str = "") -> dict:
  """`base` (a plain nested dict, changed in place) with `overrides` merged in: nested mappings key by key,
  anything else replaces; a dotted path in `replace` is replaced whole."""
  for key, value in _plain(overrides).items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) and path not in replace:
      merge(base[key], value, replace, prefix=f"{path}.")
    else:
      base[key] = json.loads(json.dumps(value, default=list)) if isinstance(value, (Mapping, list, tuple)) else value
  return base


def _set_path(d: dict, path: str, value) -> None:
  *parents, last = path.split(".")
  for p in parents:
    if not isinstance(d.get(p), Mapping):
      raise KeyError(f"config experiment link {path!r}: {p!r} is not a section of the stage's config")
    d = d[p]
  d[last] = value


def _stage_dir(workdir: pathlib.Path, name: str, fold: int | None) -> pathlib.Path:
  return workdir / name if fold is None else workdir / f"fold{fold}" / name


def plan(config, workdir: str | pathlib.Path) -> list[Stage]:
  """The experiment's stages, in run order, each with its derived config (see the module docstring)."""
  from ich_jax.data import datasets

  workdir = pathlib.Path(workdir)
  exp = config.experiment
  base = {k: v for k, v in _plain(config).items() if k != "experiment"}
  order = list(exp.order)
  unknown = [n for n in order if n not in exp.stages]
  if unknown:
    raise KeyError(f"config experiment.order names {unknown}, which experiment.stages lacks")
  per_fold = {n for n in order if exp.stages[n].get("per_fold", False)}
  folds = tuple(int(k) for k in exp.cv.folds) if per_fold else ()
  stages = []
  for fold in (folds if per_fold else (None,)):
    for position, name in enumerate(order):
      spec = exp.stages[name]
      if (name in per_fold) != (fold is not None):
        continue
      cfg = json.loads(json.dumps(base))
      replace = tuple(spec.get("replace", ()))
      template = spec.get("template", "")
      if template:
        if template not in exp.templates:
          raise KeyError(f"config experiment.stages.{name}.template={template!r} is not in experiment.templates")
        merge(cfg, exp.templates[template], replace)
      merge(cfg, spec.get("overrides", {}), replace)
      if fold is not None:
        rounds = datasets.cv_round(ConfigDict(cfg["dataset"]), int(exp.cv.num_folds), fold, exp.cv.pool)
        cfg["dataset"].update(train_split=rounds["train"], validation_split=rounds["validation"],
                              eval_split=rounds["test"])
      for path, targets in spec.get("links", ()):
        names = (targets,) if isinstance(targets, str) else tuple(targets)
        dirs = []
        for target in names:
          if target not in order[:position]:
            raise KeyError(f"config experiment.stages.{name}.links: {target!r} is not a stage before {name!r}")
          dirs.append(str(_stage_dir(workdir, target, fold if target in per_fold else None).absolute()))
        _set_path(cfg, path, dirs[0] if isinstance(targets, str) else tuple(dirs))
      steps = tuple(spec.steps)
      for step in steps:
        if step not in STEPS:
          raise KeyError(f"config experiment.stages.{name}.steps: unknown step {step!r}; known: {sorted(STEPS)}")
      stages.append(Stage(name, fold, _stage_dir(workdir, name, fold), ConfigDict(cfg), steps))
  return stages


def config_hash(config) -> str:
  return hashlib.sha256(json.dumps(_plain(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _record(stage: Stage) -> dict:
  path = stage.workdir / "stage.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def _mark_done(stage: Stage, step: str) -> None:
  import jax

  if jax.process_index() != 0:
    return
  rec = _record(stage)
  rec.update(config_hash=config_hash(stage.config), stage=stage.key)
  rec["done"] = sorted(set(rec.get("done", [])) | {step})
  tmp = stage.workdir / "stage.json.tmp"
  tmp.write_text(json.dumps(rec, indent=2))
  tmp.replace(stage.workdir / "stage.json")


def _check_unchanged(stage: Stage) -> set[str]:
  """The steps already done; an error if they were done with another config."""
  rec = _record(stage)
  if rec and rec.get("config_hash") != config_hash(stage.config):
    raise ValueError(f"stage {stage.key}: {stage.workdir} holds a run of another config (stage.json hash "
                     f"{rec.get('config_hash')}, now {config_hash(stage.config)}); delete that folder to redo the "
                     "stage with the new config, or rerun with the old one")
  return set(rec.get("done", []))


def run(config, workdir: str | pathlib.Path, *, report_only: bool = False) -> pathlib.Path:
  """Runs (or resumes) every stage of `config.experiment`, then its report; returns the report's path."""
  import jax

  from ich_jax.data import datasets

  workdir = pathlib.Path(workdir)
  if jax.process_index() == 0:
    datasets.ensure_built(config.dataset)
  stages = plan(config, workdir)
  for stage in stages:
    done = _check_unchanged(stage)
    missing = [s for s in stage.steps if s not in done]
    if report_only or not missing:
      if missing:
        log.warning("stage %s has not finished %s", stage.key, missing)
      continue
    print(f"Stage {stage.key}: {', '.join(missing)} (workdir {stage.workdir})", flush=True)
    if jax.process_index() == 0:
      stage.workdir.mkdir(parents=True, exist_ok=True)
      (stage.workdir / "config.json").write_text(stage.config.to_json_best_effort(indent=2))
    for step in missing:
      start = time.perf_counter()
      _resolve(step, STEPS, "step")(stage)
      _mark_done(stage, step)
      log.info("stage %s: %s took %.1f s", stage.key, step, time.perf_counter() - start)
  path = workdir / "report.md"
  if jax.process_index() == 0:
    from ich_jax.eval import report

    text = _resolve(config.experiment.report, REPORTS, "report")(config, workdir, stages)
    report.write_text(path, text)
    print(f"Report: {path}", flush=True)
  return path


# --- Steps: each runs the shared loop's functions on the stage's config ------------------------------------


def _train(stage: Stage) -> None:
  from ich_jax.train import loop

  loop.train(stage.config, stage.workdir)


def selected_step(stage: Stage) -> int | None:
  """The checkpoint `select_checkpoint` chose, if it ran."""
  path = stage.workdir / "selection.json"
  return int(json.loads(path.read_text())["step"]) if path.is_file() else None


def _evaluate(stage: Stage) -> None:
  from ich_jax.train import evaluate

  evaluate.evaluate(stage.config, stage.workdir, step=selected_step(stage))


def _export(stage: Stage) -> None:
  from ich_jax.train import export

  export.export_features(stage.config, stage.workdir)


def _select_checkpoint(stage: Stage) -> None:
  """The kept checkpoint with the best mean Jaccard on the validation split's slices with blood.

  Seed 002's public code keeps the model of lowest validation "Jaccard loss" (Keras ModelCheckpoint,
  monitor='val_jaccard_loss'); the paper's "lowest validation Jaccard index" means the same model.
  """
  import jax
  import numpy as np

  from ich_jax.eval import metrics as M
  from ich_jax.train import loop

  cfg = stage.config
  split = cfg.dataset.get("validation_split", "")
  if not split:
    raise ValueError(f"stage {stage.key}: select_checkpoint needs config dataset.validation_split")
  source = loop.input_module(cfg).open_split(cfg.dataset, split)
  scores = {}
  for step in loop.checkpoint_steps(cfg, stage.workdir):
    exp, state, _ = loop.restore_for_eval(cfg, stage.workdir, step)
    preds = loop.predict_split(exp, state, source, batch_size=cfg.eval.batch_size,
                               fields=("mask", "study_id", "series_id", "slice_index"))
    blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
    jac = M.jaccard(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2)) if blood.any() else np.zeros(0)
    scores[int(step)] = float(jac.mean()) if jac.size else float("nan")
  if not scores:
    raise FileNotFoundError(f"stage {stage.key}: no checkpoint in {stage.workdir / 'checkpoints'}")
  finite = {s: v for s, v in scores.items() if np.isfinite(v)}
  best = max(finite, key=lambda s: (finite[s], s)) if finite else max(scores)
  if jax.process_index() == 0:
    out = {"step": best, "split": split, "metric": "mean Jaccard, validation slices with blood",
           "scores": {str(k): v for k, v in scores.items()}}
    (stage.workdir / "selection.json").write_text(json.dumps(out, indent=2))
    print(f"Stage {stage.key}: checkpoint {best} (validation Jaccard {scores[best]:.3f} of {scores})", flush=True)
