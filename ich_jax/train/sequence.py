"""Sequence task: seed 003's sequence models (ich_jax.models.sequence) over whole series of stage outputs.

Batches come from `ich_jax.data.stage_exports` (`config.dataset.kind = "series_features"`):
series padded to a fixed length, `slice_valid` True at real slices. The loss
and the predictions see valid slices only, so a series' result does not
depend on how much padding its batch carries.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ich_jax import LABELS
from ich_jax.train import losses, tasks

INPUTS = {
    # Sequence model 1 (seed 003 Fig. 1, stage 2): per-slice CNN features.
    "features": ("features", "slice_valid"),
    # Sequence model 2 (stage 3): earlier stages' slice probabilities + slice gap.
    "stage_predictions": ("predictions", "gap", "slice_valid"),
}


@tasks.register("sequence_classification")
class SequenceClassification(tasks.Task):
  """Series → six sigmoid outputs per slice; weighted BCE averaged over the valid slices of the batch.

  `inputs`: "features" (seq_gru_1) or "stage_predictions" (seq_gru_2). Every
  valid slice weighs the same, as each slice is one sample in seed 003 eq. (1).
  """

  target_keys = ("labels",)

  def __init__(self, inputs: str = "features", label_weights=(2.0, 1.0, 1.0, 1.0, 1.0, 1.0)):
    if inputs not in INPUTS:
      raise ValueError(f"config task.inputs={inputs!r}; expected one of {sorted(INPUTS)}")
    if len(label_weights) != len(LABELS):
      raise ValueError(f"task.label_weights has {len(label_weights)} entries, expected {len(LABELS)} for {LABELS}")
    self.inputs = inputs
    self.input_keys = INPUTS[inputs]
    self.label_weights = tuple(float(w) for w in label_weights)

  def _logits(self, model, batch) -> jax.Array:
    if self.inputs == "features":
      logits = model(batch["features"], batch["slice_valid"])
    else:
      logits = model(batch["predictions"], batch["gap"], batch["slice_valid"])
    return logits.astype(jnp.float32)

  def loss(self, model, batch):
    logits = self._logits(model, batch)
    valid = batch["slice_valid"].astype(jnp.float32)
    per_slice = losses.weighted_bce(logits, batch["labels"].astype(jnp.float32), jnp.asarray(self.label_weights))
    count = jnp.maximum(valid.sum(), 1.0)
    loss = (per_slice * valid).sum() / count
    correct = (logits[..., 0] > 0) == (batch["labels"][..., 0] > 0.5)
    return loss, {"loss": loss, "accuracy_any": (correct * valid).sum() / count}

  def predict(self, model, batch) -> dict[str, Any]:
    """[B, L, 6] probabilities and the `slice_valid` [B, L] saying which are slices (the loop keeps those)."""
    return {"probabilities": jax.nn.sigmoid(self._logits(model, batch)), "slice_valid": batch["slice_valid"]}

  # A sequence model exported is a stage for the next one (seed 003: model 2 reads model 1's outputs).
  export = predict
