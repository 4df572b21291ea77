"""Tasks: what a kind of model is trained to do — its inputs, loss and predictions.

A task wraps an architecture (the scenic idiom): the backbone stays a plain
module, the task decides which batch fields it reads, how the model is called,
the loss, and what a prediction is. The trainer loop is shared by all tasks.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from ich_jax import LABELS

_TASKS: dict[str, Callable[..., "Task"]] = {}


def register(name: str):
  def wrap(cls):
    _TASKS[name] = cls
    return cls
  return wrap


def build(config) -> "Task":
  """Builds the task named by `config.name` with the remaining fields as options."""
  options = {k: v for k, v in config.items() if k != "name"}
  if config.name not in _TASKS:
    raise KeyError(f"config task.name={config.name!r} is not a registered task; known: {', '.join(sorted(_TASKS))}")
  return _TASKS[config.name](**options)


class Task:
  input_keys: tuple[str, ...] = ("image",)
  target_keys: tuple[str, ...] = ()

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return self.input_keys + self.target_keys

  def loss(self, model, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def predict(self, model, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    raise NotImplementedError


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-example class-weighted binary cross-entropy, normalised by the weight sum.

  This is the RSNA 2019 challenge metric's form (seed 003 paper, §2 eq. 1): a
  weighted mean over the six columns of the per-column log-loss.
  """
  per_class = optax.sigmoid_binary_cross_entropy(logits, labels)
  return (per_class * weights).sum(-1) / weights.sum()


@register("multilabel_classification")
class MultilabelClassification(Task):
  """Slice → six sigmoid outputs (any + five subtypes), weighted BCE."""

  target_keys = ("labels",)

  def __init__(self, label_weights=(2.0, 1.0, 1.0, 1.0, 1.0, 1.0), label_smoothing: float = 0.0):
    if len(label_weights) != len(LABELS):
      raise ValueError(f"task.label_weights has {len(label_weights)} entries, expected {len(LABELS)} for {LABELS}")
    self.label_weights = tuple(float(w) for w in label_weights)
    self.label_smoothing = float(label_smoothing)

  def loss(self, model, batch):
    logits = model(batch["image"]).astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    if self.label_smoothing:
      labels = labels * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
    per_example = weighted_bce(logits, labels, jnp.asarray(self.label_weights))
    loss = per_example.mean()
    accuracy_any = ((logits[:, 0] > 0) == (batch["labels"][:, 0] > 0.5)).mean()
    return loss, {"loss": loss, "accuracy_any": accuracy_any}

  def predict(self, model, batch) -> dict[str, Any]:
    return {"probabilities": jax.nn.sigmoid(model(batch["image"]).astype(jnp.float32))}
