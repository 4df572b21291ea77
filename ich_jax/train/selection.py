"""Model selection by validation Jaccard during training: `BestCheckpoint`, kept and resumable.

Seed 002 §6: "The trained model was validated after each epoch. The best-trained
model that resulted in the lowest validation Jaccard index was saved and used for
testing purposes" (its public code: Keras ModelCheckpoint on 'val_jaccard_loss',
save_best_only, period 1). With `config.train.select_every` > 0 the training loop
validates every that many steps (the config sets one epoch's worth) and this
module keeps the best state; `ich_jax.train.evaluate.select_checkpoint` then
chooses it. The score: mean Jaccard of the predicted masks over the validation
slices with blood (`jaccard_on_blood`).

Files in the workdir: every score in `validation.json`; the best state so far in
`best_checkpoints/` (Orbax, the state alone: `ich_jax.train.checkpoint`). Kept
there are the best of all validations and the best of those up to the newest
regular checkpoint: a run resumed from that checkpoint forgets the validations
after it (and runs them again, on the same batches), and still has the best
state of the validations it keeps. Every process validates and saves (the
prediction gathers from all, Orbax saves collectively); process 0 writes
`validation.json`.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from ich_jax import atomic
from ich_jax.eval import metrics as M
from ich_jax.train import checkpoint

VALIDATION = "validation.json"
BEST_CHECKPOINTS = "best_checkpoints"
# The batch fields a validation prediction keeps (besides the predictions).
FIELDS = ("mask", "study_id", "series_id", "slice_index")
METRIC = "mean Jaccard, validation slices with blood"


def jaccard_on_blood(preds: dict[str, np.ndarray]) -> float:
  """Mean slice Jaccard of `pred_mask` against `mask` over the slices with blood (NaN: none has blood)."""
  blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
  if not blood.any():
    return float("nan")
  return float(M.jaccard(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2)).mean())


def best_step(scores: dict[int, float]) -> int:
  """The step of best score, ties to the later one; where no score is finite (no blood), the newest step."""
  finite = {s: v for s, v in scores.items() if np.isfinite(v)}
  return max(finite, key=lambda s: (finite[s], s)) if finite else max(scores)


def read_scores(workdir: str | pathlib.Path) -> dict[int, float]:
  """step → validation score of the validations a workdir's training ran ({} if none)."""
  path = pathlib.Path(workdir) / VALIDATION
  if not path.is_file():
    return {}
  return {int(s): float(v) for s, v in json.loads(path.read_text())["scores"].items()}


def validation_split(config, workdir) -> str:
  split = config.dataset.get("validation_split", "")
  if not split:
    raise ValueError(f"{workdir}: select_checkpoint (and train.select_every) needs config dataset.validation_split")
  return split


class BestCheckpoint:
  """Validates a training run every `every` steps with `score(state)` and keeps the best state.

  `start`: the step the run starts (or resumes) from, with `state`; `total`: its last step, validated too.
  The loop calls `after_step` once a step's regular checkpoint, if any, is written.
  """

  def __init__(self, workdir: str | pathlib.Path, every: int, score: Callable[[dict], float], state, *,
               start: int, total: int):
    workdir = pathlib.Path(workdir)
    if int(every) < 1:
      raise ValueError(f"config train.select_every={every}: validate every >= 1 steps (0: no validation)")
    self.every, self.total, self.score, self.path = int(every), int(total), score, workdir / VALIDATION
    self.ckpt = checkpoint.Checkpointer(workdir / BEST_CHECKPOINTS, keep=None)
    # Resumed at `start`: the validations after it belong to steps that will run again.
    self.scores = {s: v for s, v in read_scores(workdir).items() if s <= start}
    for s in self.ckpt.all_steps:
      if s > start or s not in self.scores:
        self.ckpt.delete(s)
    if start and self._due(start) and start not in self.scores:
      # Stopped after the regular checkpoint of a validation step, before that validation.
      self._validate(start, state, start)

  def _due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def after_step(self, step: int, state, *, saved: int | None) -> None:
    """Validates `state` at `step` when due; `saved`: the step of the newest regular checkpoint."""
    if self._due(step):
      self._validate(step, state, saved)

  def _validate(self, step: int, state, saved: int | None) -> None:
    self.scores[step] = float(self.score(state))
    best = best_step(self.scores)
    if best == step:
      self.ckpt.save(step, state)
    if jax.process_index() == 0:
      atomic.write_text(self.path, json.dumps({"metric": METRIC, "every": self.every, "best": best,
                                               "scores": {str(k): v for k, v in sorted(self.scores.items())}},
                                              indent=2))
    upto = {s: v for s, v in self.scores.items() if saved is not None and s <= saved}
    keep = {best} | ({best_step(upto)} if upto else set())
    for s in self.ckpt.all_steps:
      if s not in keep:
        self.ckpt.delete(s)

  def close(self) -> None:
    self.ckpt.close()
