"""Evaluate a trained state on the held-out split.

Writes predictions.npz (everything, masks included), predictions.csv (the
format `python -m ich_jax.eval` reads), metrics.json, report.md and the
figures into the workdir, and prints the short table.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from ich_jax.eval import baseline, report
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
  metrics = report.classification_metrics(preds, threshold=config.eval.threshold,
                                          n_boot=int(config.eval.get("n_boot", 500)),
                                          seed=int(config.eval.get("bootstrap_seed", 0)))
  metrics["step"] = int(step) if step is not None else None
  metrics["split"] = config.dataset.eval_split
  metrics["dataset"] = f"{config.dataset.name}/{config.dataset.config}"
  report.write_report(metrics, preds, workdir, figures=config.eval.get("figures", True),
                      title=f"Evaluation of {workdir.name}, step {metrics['step']}")
  np.savez(workdir / "predictions.npz",
           **{k: (v.astype(str) if v.dtype.kind in "OS" else v) for k, v in preds.items()})
  report.write_predictions_csv(preds, workdir / "predictions.csv")
  print(report.format_table(metrics), flush=True)
  print(f"Report: {workdir / 'report.md'}", flush=True)
  return metrics
