"""Seed 002's threshold baseline as an experiment stage: grid search on the training split, then the held-out
split's predictions and report like any evaluation.

A host step of seed 002's experiment (`ich_jax.experiments.physionet_patch_unet`). It reads the stage's
training split through the slice pipeline (the first recipe channel, i.e. the image the U-Nets see, as 8
bits), searches the thresholds (`ich_jax.eval.threshold`), and writes the held-out split's
`predictions.npz`, `predictions.csv`, `metrics.json` and `report.md` (`ich_jax.eval.report`), and the
chosen pair in `thresholds.json`; a slice's probability is 1 when `task.slice_min_pixels` of its pixels are
in range (1: any), else 0.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from ich_jax import atomic
from ich_jax.eval import report, threshold


def _gather(config, split: str) -> dict[str, np.ndarray]:
  """Every slice of `split` through the slice pipeline (no augmentation): ids, labels, masks, 8-bit grey."""
  from ich_jax.data import pipeline

  source = pipeline.open_split(config.dataset, split)
  out: dict[str, list] = {}
  for batch in pipeline.eval_batches(source, config.data, batch_size=int(config.eval.batch_size)):
    keep = np.asarray(batch["valid"]).astype(bool)
    batch = dict(batch)
    batch["grey"] = threshold.to_uint8(batch.pop("image")[..., 0])
    for k, v in batch.items():
      if k != "valid":
        out.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def run_stage(workdir, *, config) -> dict:
  """Grid search on `config`'s training split, predictions and report on its held-out split, in `workdir`."""
  from ich_jax.data import pipeline

  workdir = pathlib.Path(workdir)
  # The first stage of seed 002's rounds: on a fresh data_dir the dataset is not built yet (training builds it
  # in loop.train; this host step reads it first).
  pipeline.ensure_ready(config.dataset)
  train = _gather(config, config.dataset.train_split)
  chosen = threshold.search(*threshold.histograms(train["grey"], train["mask"]))
  test = _gather(config, config.dataset.eval_split)
  grey = test.pop("grey")
  preds = dict(test)
  preds["pred_mask"] = threshold.segment(grey, chosen["lower"], chosen["upper"])
  # Positive from as many pixels in range as the U-Nets' maps need (task.slice_min_pixels: seed 002's public
  # code, configs/physionet_patch_unet.py), so that Tables 5 and 6 read every method by one rule.
  count = (preds["pred_mask"].reshape(len(grey), -1) > 0).sum(1)
  positive = (count >= int(config.task.get("slice_min_pixels", 1))).astype(np.float32)
  preds["probabilities"] = np.repeat(positive[:, None], 6, axis=1)
  workdir.mkdir(parents=True, exist_ok=True)
  meta = {"split": config.dataset.eval_split, "dataset": f"{config.dataset.name}/{config.dataset.config}",
          "step": None, "threshold_baseline": {**chosen, "train_split": config.dataset.train_split}}
  metrics = report.write_evaluation(preds, workdir, config.eval, meta=meta, quiet=True,
                                    title=f"Threshold baseline {chosen['lower']}–{chosen['upper']} ({workdir.name})")
  atomic.write_text(workdir / "thresholds.json", json.dumps(chosen, indent=2))
  print(f"Threshold baseline: {chosen['lower']}–{chosen['upper']} (training Jaccard {chosen['train_jaccard']:.3f}); "
        f"held-out Dice on slices with blood {metrics['volumes']['dice']['slices_with_blood']['dice']:.3f}",
        flush=True)
  return metrics
