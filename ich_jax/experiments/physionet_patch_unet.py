"""Seed 002: the threshold baseline, the full-slice U-Net and the patch U-Net, cross-validated; Tables 5 and 6.

The stages, under the workdir W, for every cross-validation round k of `config.experiment.cv.folds` (the
round's splits: `experiment.cv`); each of the config without its `experiment` section (the base), the U-Nets
with the steps and overrides of `experiment.stages.<method>` (configs/physionet_patch_unet.py):

  fold<k>/threshold   the grid-search baseline (a host step: ich_jax.experiments.threshold_baseline)
  fold<k>/full_unet   the U-Net on whole slices: train (validating as it goes, config train.select_every),
                      keep the state of best validation Jaccard, evaluate
  fold<k>/patch_unet  the U-Net on windows (dataset kind "patches"), evaluated stitched (sliding window)
  report              W/report.md and W/tables.json: every round's held-out predictions pooled per method
                      (ich_jax.eval.segmentation_tables: Dice on slices with blood, Tables 5 and 6, Dice per
                      subtype, what each round chose)
"""
from __future__ import annotations

import functools
import pathlib

from ml_collections import ConfigDict

from ich_jax.eval import report as R
from ich_jax.eval import segmentation_tables as T
from ich_jax.experiments import stage_configs, threshold_baseline
from ich_jax.experiments.runner import Stage

METHODS = ("threshold", "full_unet", "patch_unet")
FINAL = None   # the report pools the rounds: no single stage holds the headline evaluation


def stages(config, root: pathlib.Path) -> list[Stage]:
  e = config.experiment
  rounds = tuple(int(k) for k in e.cv.folds)
  if not rounds:
    raise ValueError("config experiment.cv.folds is empty: name the cross-validation rounds to run")
  base = stage_configs.base_config(config)
  planned = []
  for k in rounds:
    threshold = ConfigDict(stage_configs.cv_round(stage_configs.derive(base), e.cv, k))
    planned.append(Stage(f"fold{k}/threshold", fn=functools.partial(threshold_baseline.run_stage, config=threshold),
                         params={"config": threshold}))
    for method in METHODS[1:]:
      spec = e.stages[method]
      cfg = stage_configs.cv_round(stage_configs.derive(base, spec.get("overrides", {})), e.cv, k)
      planned.append(Stage(f"fold{k}/{method}", ConfigDict(cfg), steps=tuple(spec.steps)))
  runs = []
  for s in planned:
    fold, _, method = s.name.partition("/")
    runs.append((method, int(fold.removeprefix("fold")), str(root / s.name)))
  return planned + [Stage("report", fn=functools.partial(write_report, root=root, config=config, runs=runs),
                          params={"runs": runs}, after=tuple(s.name for s in planned))]


def write_report(workdir: pathlib.Path, *, root: pathlib.Path, config, runs) -> str:
  """W/report.md and W/tables.json from the rounds' predictions; returns the report."""
  t = T.tables(runs, float(config.eval.threshold), min_pixels=int(config.task.get("slice_min_pixels", 1)),
               reference_min_pixels=int(config.eval.get("slice_reference_min_pixels", 0)))
  R.write_metrics(t, root / "tables.json")
  cv = config.experiment.cv
  folds = f"{cv.num_folds}-fold cross-validation by study, rounds {list(cv.folds)} run"
  text = T.format_markdown(t, title="Seed 002: PhysioNet patch U-Net",
                           dataset=f"{config.dataset.name}/{config.dataset.config}", folds=folds)
  R.write_text(root / "report.md", text)
  print(f"Report: {root / 'report.md'}", flush=True)
  return text
