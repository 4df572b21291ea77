"""Evaluate a trained state on the held-out split.

Writes predictions.npz (everything, masks included), predictions.csv (the
format `python -m ich_jax.eval` reads), metrics.json, report.md and the
figures into the workdir, and prints the short table (the writing:
`ich_jax.eval.report.write_evaluation`). `select_checkpoint` picks the
checkpoint of best validation Jaccard (seed 002), which the evaluation and
exports of an experiment stage then use: among the kept checkpoints, or, with
`config.train.select_every` > 0, among every validation the loop ran during
training (`ich_jax.train.selection`).
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from ich_jax import atomic
from ich_jax.eval import baseline, mask_agreement, report
from ich_jax.eval.prediction_files import BASELINE_COLUMN
from ich_jax.train import loop, selection


def evaluate(config, workdir: str | pathlib.Path, *, exp=None, state=None, step: int | None = None) -> dict | None:
  """Evaluates `state` (default: the workdir's newest checkpoint); process 0 writes and returns metrics."""
  workdir = pathlib.Path(workdir)
  if state is None:
    exp, state, step = loop.restore_for_eval(config, workdir, step)
  source = loop.input_module(config).open_split(config.dataset, config.dataset.eval_split)
  preds = loop.predict_split(exp, state, source, batch_size=config.eval.batch_size)
  if jax.process_index() != 0:
    return None
  target = getattr(exp.task, "target", "mask")
  if target != "mask":
    # Not hemorrhage (a skull-stripping U-Net): the predicted masks against their reference, nothing else.
    metrics = {**mask_agreement.mask_agreement(preds, target), "step": None if step is None else int(step),
               "split": config.dataset.eval_split, "dataset": f"{config.dataset.name}/{config.dataset.config}"}
    report.write_metrics(metrics, workdir / "metrics.json")
    title = f"Evaluation of {workdir.name}, step {step}"
    report.write_text(workdir / "report.md", mask_agreement.format_mask_agreement(metrics, title=title))
    print(mask_agreement.format_mask_agreement(metrics), flush=True)
    return metrics
  if config.eval.get("baseline", True):
    preds[BASELINE_COLUMN] = np.array([baseline.bright_fraction(source[int(i)]["image"])
                                       for i in preds["record_index"]])
  meta = {"step": int(step) if step is not None else None, "split": config.dataset.eval_split,
          "dataset": f"{config.dataset.name}/{config.dataset.config}", "initial_weights": loop.initial_weights(config)}
  if "det_boxes" in preds:
    # A detector (seed 001): Table 2 on the balanced set, FROC, box AP and volumes per class.
    from ich_jax.eval import detection

    meta["detection"] = detection.detection_metrics(
        preds, exp.task.classes, threshold=float(config.eval.threshold), n_boot=int(config.eval.get("n_boot", 500)),
        seed=int(config.eval.get("bootstrap_seed", 0)))
  if config.eval.get("compare_with"):
    # Other runs' predictions on the same studies (the quickstart CNN, an ablation), side by side.
    from ich_jax.eval import compare

    meta["side_by_side"] = compare.compare_workdirs(preds, dict(config.eval.compare_with))
  return report.write_evaluation(preds, workdir, config.eval, meta=meta,
                                 title=f"Evaluation of {workdir.name}, step {meta['step']}")


SELECTION = "selection.json"


def selected_step(workdir: str | pathlib.Path) -> int | None:
  """The checkpoint `select_checkpoint` chose for a workdir, or None if it never ran there."""
  path = pathlib.Path(workdir) / SELECTION
  return int(json.loads(path.read_text())["step"]) if path.is_file() else None


def validation_jaccard(exp, state, source, *, batch_size: int) -> float:
  """Mean Jaccard of `state`'s predicted masks on the slices of `source` with blood (NaN: none has blood)."""
  return selection.jaccard_on_blood(loop.predict_split(exp, state, source, batch_size=batch_size,
                                                       fields=selection.FIELDS))


def select_checkpoint(config, workdir: str | pathlib.Path) -> int:
  """The checkpoint with the best mean Jaccard on `config.dataset.validation_split`'s slices with blood,
  recorded in `<workdir>/selection.json` (every candidate's score too); returns its step.

  Seed 002 §6: "The trained model was validated after each epoch. The best-trained model that resulted in the
  lowest validation Jaccard index was saved"; its public code keeps the model of lowest validation "Jaccard
  loss" (Keras ModelCheckpoint, monitor='val_jaccard_loss', period=1), the same model. With
  `config.train.select_every` > 0 the loop validated every that many steps and kept the best
  (`ich_jax.train.selection`, `<workdir>/validation.json`): that one is chosen. Without, the kept checkpoints are
  validated now and the best of them chosen.
  """
  workdir = pathlib.Path(workdir)
  split = selection.validation_split(config, workdir)
  if int(config.train.get("select_every", 0)) > 0:
    scores, checked = selection.read_scores(workdir), f"every {int(config.train.select_every)} steps"
    if not scores:
      raise FileNotFoundError(f"{workdir / selection.VALIDATION}: no validation during training to select from "
                              f"(config train.select_every={int(config.train.select_every)}); train first")
  else:
    source = loop.input_module(config).open_split(config.dataset, split)
    scores, checked = {}, "kept checkpoints"
    for step in loop.checkpoint_steps(config, workdir):
      exp, state, _ = loop.restore_for_eval(config, workdir, step)
      scores[int(step)] = validation_jaccard(exp, state, source, batch_size=config.eval.batch_size)
    if not scores:
      raise FileNotFoundError(f"{workdir}: no checkpoint in {workdir / 'checkpoints'} to select from")
  best = selection.best_step(scores)
  if jax.process_index() == 0:
    out = {"step": best, "split": split, "metric": selection.METRIC, "checked": checked,
           "scores": {str(k): v for k, v in scores.items()}}
    atomic.write_text(workdir / SELECTION, json.dumps(out, indent=2))
    print(f"{workdir.name}: checkpoint {best} (validation Jaccard {scores[best]:.3f} of {scores})", flush=True)
  return best
