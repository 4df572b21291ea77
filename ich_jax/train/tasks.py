"""Tasks: what a kind of model is trained to do — its inputs, loss and predictions.

A task wraps an architecture (the scenic idiom): the backbone stays a plain
module, the task decides which batch fields it reads, how the model is called,
the loss, and what a prediction is. The trainer loop is shared by all tasks.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from ich_jax import LABELS
from ich_jax.models import gradcam
from ich_jax.train import losses

_TASKS: dict[str, Callable[..., "Task"]] = {}

# Modules holding further registered tasks, imported by `build` (not at import time).
_MODULES: tuple[str, ...] = ("ich_jax.train.segmentation", "ich_jax.train.sequence", "ich_jax.train.ensemble",
                             "ich_jax.train.detection")


def register(name: str):
  def wrap(cls):
    _TASKS[name] = cls
    return cls
  return wrap


def build(config) -> "Task":
  """Builds the task named by `config.name` with the remaining fields as options."""
  options = {k: v for k, v in config.items() if k != "name"}
  for module in _MODULES:
    importlib.import_module(module)
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


def coarse_mask(mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """[B, H, W] label map → float [B, h, w]: 1 where any pixel of the cell is blood."""
  b, h, w = mask.shape
  gh, gw = grid
  if h % gh or w % gw:
    raise ValueError(f"mask {h}×{w} does not tile into the feature grid {gh}×{gw}")
  blood = (mask > 0).reshape(b, gh, h // gh, gw, w // gw)
  return blood.any(axis=(2, 4)).astype(jnp.float32)


def model_heads(model, image: jax.Array, *, with_mask: bool) -> dict[str, jax.Array]:
  """{"logits"[, "mask_logits"]} of a classifier, in one forward pass.

  Models whose blood map does not sit on their last feature map define
  `heads(x)`; the others expose `features_map` → `classify` / `mask_logits`.
  """
  if hasattr(model, "heads"):
    return model.heads(image)
  fmap = model.features_map(image)
  out = {"logits": model.classify(fmap)}
  if with_mask:
    out["mask_logits"] = model.mask_logits(fmap)
  return out


@register("multilabel_classification")
class MultilabelClassification(Task):
  """Slice → six sigmoid outputs (any + five subtypes), weighted BCE."""

  target_keys = ("labels",)

  def __init__(self, label_weights=(2.0, 1.0, 1.0, 1.0, 1.0, 1.0), label_smoothing: float = 0.0,
               mask_loss_weight: float = 0.0, mask_loss: str = "bce", saliency_loss_weight: float = 0.0,
               saliency_class: str = "any"):
    if len(label_weights) != len(LABELS):
      raise ValueError(f"task.label_weights has {len(label_weights)} entries, expected {len(LABELS)} for {LABELS}")
    self.label_weights = tuple(float(w) for w in label_weights)
    self.label_smoothing = float(label_smoothing)
    # > 0: strong labels. The model's `mask_logits` on its last feature map learn
    # where blood is (mask max-pooled to that grid), beside the slice labels;
    # seed 000 (§2.1.5, Table 2) finds mask supervision beats slice labels alone.
    self.mask_loss_weight = float(mask_loss_weight)
    # "bce": mean per-cell BCE, which a bleed of one cell in 64 barely moves;
    # "dice" adds nothing for blood-free slices but weighs every slice with
    # blood alike, small or large (soft Dice per slice, slices with blood only);
    # "dice+bce" both (BCE keeps teaching normal slices "no blood").
    if mask_loss not in ("bce", "dice", "dice+bce"):
      raise ValueError(f"config task.mask_loss={mask_loss!r}; expected 'bce', 'dice' or 'dice+bce'")
    self.mask_loss = mask_loss
    # > 0: strong labels as seed 000 §2.1.5 uses them. The Grad-CAM (seed 003
    # eqs. 2–3) of class `saliency_class` on the last feature map is compared
    # with the blood mask on that grid (losses.saliency_loss: soft Dice)
    # and added to the classification loss; no extra layer, the reference
    # networks keep their parameter counts.
    self.saliency_loss_weight = float(saliency_loss_weight)
    if saliency_class not in LABELS:
      raise ValueError(f"config task.saliency_class={saliency_class!r}; expected one of {LABELS}")
    self.saliency_index = LABELS.index(saliency_class)
    if self.mask_loss_weight or self.saliency_loss_weight:
      self.target_keys = ("labels", "mask")

  def _heads(self, model, image) -> dict[str, jax.Array]:
    """Logits, and what the strong-label terms need: mask logits and/or the Grad-CAM, from one feature map."""
    if not self.saliency_loss_weight:
      return model_heads(model, image, with_mask=bool(self.mask_loss_weight))
    fmap = model.features_map(image)
    logits, cam = gradcam.logits_and_cam(model, fmap, self.saliency_index)
    out = {"logits": logits, "cam": cam}
    if self.mask_loss_weight:
      out["mask_logits"] = model.mask_logits(fmap)
    return out

  def loss(self, model, batch):
    out = self._heads(model, batch["image"])
    logits = out["logits"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    if self.label_smoothing:
      labels = labels * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
    per_example = losses.weighted_bce(logits, labels, jnp.asarray(self.label_weights))
    loss = per_example.mean()
    metrics = {"accuracy_any": ((logits[:, 0] > 0) == (batch["labels"][:, 0] > 0.5)).mean()}
    if self.mask_loss_weight:
      cell_logits = out["mask_logits"].astype(jnp.float32)
      target = coarse_mask(batch["mask"], cell_logits.shape[1:])
      mask_loss = 0.0
      if "bce" in self.mask_loss:
        mask_loss = optax.sigmoid_binary_cross_entropy(cell_logits, target).mean()
      if "dice" in self.mask_loss:
        mask_loss = mask_loss + losses.dice_loss(cell_logits[..., None], target[..., None], over="slice",
                                                 ignore_empty=True)
      metrics["mask_loss"] = mask_loss
      loss = loss + self.mask_loss_weight * mask_loss
    if self.saliency_loss_weight:
      cam, mask = out["cam"], batch["mask"]
      if self.saliency_index:
        # A subtype's CAM against that subtype's pixels (the label map keeps the higher index where two overlap).
        mask = jnp.where(mask == self.saliency_index, mask, 0)
      saliency = losses.saliency_loss(cam, coarse_mask(mask, cam.shape[1:]))
      metrics["saliency_loss"] = saliency
      loss = loss + self.saliency_loss_weight * saliency
    metrics["loss"] = loss
    return loss, metrics

  def predict(self, model, batch) -> dict[str, Any]:
    return {"probabilities": jax.nn.sigmoid(model(batch["image"]).astype(jnp.float32))}

  def export(self, model, batch) -> dict[str, Any]:
    """Pooled features of the last feature map and probabilities: seed 003's sequence-model inputs (§2, Fig. 1)."""
    image = batch["image"]
    fmap = model.features_map(image)
    logits = model.heads(image)["logits"] if hasattr(model, "heads") else model.classify(fmap)
    return {"features": model.pooled(fmap).astype(jnp.float32),
            "probabilities": jax.nn.sigmoid(logits.astype(jnp.float32))}
