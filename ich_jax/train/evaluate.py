"""Evaluate a trained state on the held-out split.

Writes predictions.npz (everything, masks included), predictions.csv (the
format `python -m ich_jax.eval` reads), metrics.json, report.md and the
figures into the workdir, and prints the short table (the writing:
`ich_jax.eval.report.write_evaluation`). `select_checkpoint` picks the kept
checkpoint of best validation Jaccard (seed 002), which the evaluation and
exports of an experiment stage then use.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from ich_jax import atomic
from ich_jax.eval import baseline, mask_agreement, report
from ich_jax.eval.prediction_files import BASELINE_COLUMN
from ich_jax.train import loop


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


def select_checkpoint(config, workdir: str | pathlib.Path) -> int:
  """The kept checkpoint with the best mean Jaccard on `config.dataset.validation_split`'s slices with blood,
  recorded in `<workdir>/selection.json` (every candidate's score too); returns its step.

  Seed 002's public code keeps the model of lowest validation "Jaccard loss" (Keras ModelCheckpoint,
  monitor='val_jaccard_loss'); the paper's "lowest validation Jaccard index" means the same model.
  """
  from ich_jax.eval import metrics as M

  workdir = pathlib.Path(workdir)
  split = config.dataset.get("validation_split", "")
  if not split:
    raise ValueError(f"{workdir}: select_checkpoint needs config dataset.validation_split")
  source = loop.input_module(config).open_split(config.dataset, split)
  scores = {}
  for step in loop.checkpoint_steps(config, workdir):
    exp, state, _ = loop.restore_for_eval(config, workdir, step)
    preds = loop.predict_split(exp, state, source, batch_size=config.eval.batch_size,
                               fields=("mask", "study_id", "series_id", "slice_index"))
    blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
    jac = M.jaccard(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2)) if blood.any() else np.zeros(0)
    scores[int(step)] = float(jac.mean()) if jac.size else float("nan")
  if not scores:
    raise FileNotFoundError(f"{workdir}: no checkpoint in {workdir / 'checkpoints'} to select from")
  finite = {s: v for s, v in scores.items() if np.isfinite(v)}
  best = max(finite, key=lambda s: (finite[s], s)) if finite else max(scores)
  if jax.process_index() == 0:
    out = {"step": best, "split": split, "metric": "mean Jaccard, validation slices with blood",
           "scores": {str(k): v for k, v in scores.items()}}
    atomic.write_text(workdir / SELECTION, json.dumps(out, indent=2))
    print(f"{workdir.name}: checkpoint {best} (validation Jaccard {scores[best]:.3f} of {scores})", flush=True)
  return best
