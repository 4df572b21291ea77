"""Evaluate a trained state on the held-out split.

Writes predictions.npz (everything, masks included), predictions.csv (the
format `python -m ich_jax.eval` reads), metrics.json, report.md and the
figures into the workdir, and prints the short table. `write_evaluation`
does the writing for predictions from anywhere (a model, or stage outputs an
experiment combined: seed 003's fold means and backbone ensemble).
`select_checkpoint` picks the kept checkpoint of best validation Jaccard
(seed 002), which the evaluation and exports of an experiment stage then use.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import numpy as np

from ich_jax import atomic
from ich_jax.eval import baseline, report
from ich_jax.train import loop


def write_evaluation(preds: Mapping[str, np.ndarray], workdir: str | pathlib.Path, eval_config, *,
                     title: str, meta: Mapping | None = None, quiet: bool = False) -> dict:
  """Metrics, report.md, figures, predictions.npz and predictions.csv of per-slice `preds` in `workdir`.

  `eval_config`: `config.eval` (threshold, n_boot, bootstrap_seed, figures).
  `meta` (step, split, dataset, ...) is stored in the metrics. Labels must be
  known: a split with NaN labels (rsna_ich's unlabelled `test`) is an error,
  not a table of negatives.
  """
  workdir = pathlib.Path(workdir)
  labels = np.asarray(preds["labels"], np.float64) if "labels" in preds else None
  if labels is not None and np.isnan(labels).any():
    what = dict(meta or {}).get("split", "the evaluated split")
    raise ValueError(f"{workdir}: {what} has {int(np.isnan(labels).any(1).sum())} slices with NaN labels "
                     "(unlabelled, e.g. rsna_ich's stage_2_test); evaluate a labelled split "
                     "(config dataset.eval_split, e.g. 'validation')")
  metrics = report.classification_metrics(preds, threshold=eval_config.threshold,
                                          n_boot=int(eval_config.get("n_boot", 500)),
                                          seed=int(eval_config.get("bootstrap_seed", 0)))
  metrics.update(meta or {})
  report.write_report(metrics, preds, workdir, figures=eval_config.get("figures", True), title=title)
  arrays = {k: np.asarray(v) for k, v in preds.items()}
  with atomic.open_write(workdir / "predictions.npz", "wb") as f:
    np.savez(f, **{k: (v.astype(str) if v.dtype.kind in "OS" else v) for k, v in arrays.items()})
  report.write_predictions_csv(preds, workdir / "predictions.csv")
  if not quiet:
    print(report.format_table(metrics), flush=True)
    print(f"Report: {workdir / 'report.md'}", flush=True)
  return metrics


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
    metrics = {**report.mask_agreement(preds, target), "step": None if step is None else int(step),
               "split": config.dataset.eval_split, "dataset": f"{config.dataset.name}/{config.dataset.config}"}
    report.write_metrics(metrics, workdir / "metrics.json")
    report.write_text(workdir / "report.md", report.format_mask_agreement(metrics, title=f"Evaluation of "
                                                                            f"{workdir.name}, step {step}"))
    print(report.format_mask_agreement(metrics), flush=True)
    return metrics
  if config.eval.get("baseline", True):
    preds[report.BASELINE_COLUMN] = np.array([baseline.bright_fraction(source[int(i)]["image"])
                                              for i in preds["record_index"]])
  meta = {"step": int(step) if step is not None else None, "split": config.dataset.eval_split,
          "dataset": f"{config.dataset.name}/{config.dataset.config}"}
  return write_evaluation(preds, workdir, config.eval, title=f"Evaluation of {workdir.name}, step {meta['step']}",
                          meta=meta)


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
