"""Grad-CAM (seed 003, eqs. 2–3; Selvaraju et al. 2017), the map saliency supervision trains (seed 000, §2.1.5).

Works with any model of the classifier protocol (`features_map`, `classify`):

  α_k^c = 1/Z Σ_ij ∂y^c/∂A_ij^k         (eq. 2; A the last conv map, Z = h·w, y^c the logit)
  L^c   = ReLU(Σ_k α_k^c A^k)            (eq. 3)

Seed 000 trains on strong labels by comparing "the saliency map from the last
convolutional layer" with the hemorrhage mask and adding that segmentation loss
to the classification loss (the loss: `ich_jax.train.losses.saliency_loss`). As
a task's extra term:

  fmap = model.features_map(images)
  logits, cam = gradcam.logits_and_cam(model, fmap, class_index=0)
  loss = bce(logits, labels) + w · losses.saliency_loss(cam, coarse_mask(mask, cam.shape[1:]))

The loss differentiates through eq. 2's gradient (a second-order term), which
JAX does without special handling.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def logits_and_cam(model: nnx.Module, fmap: jax.Array, class_index) -> tuple[jax.Array, jax.Array]:
  """(logits [B, K], Grad-CAM [B, h, w] float32) from one call of `model.classify(fmap)`.

  `class_index`: an int, or one index per example [B]. Differentiable, and safe
  in train mode: state the head updates (dropout's RNG counter) is written back
  to `model`.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def head(f):
    # A merged copy lives inside the vjp trace, so its state updates are legal there.
    m = nnx.merge(graphdef, params, rest, copy=True)
    return m.classify(f), nnx.state(m, nnx.Not(nnx.Param))

  logits, vjp_fn, rest_after = jax.vjp(head, fmap, has_aux=True)
  nnx.update(model, rest_after)
  index = jnp.broadcast_to(jnp.asarray(class_index), logits.shape[:1])
  (grads,) = vjp_fn(jax.nn.one_hot(index, logits.shape[-1], dtype=logits.dtype))
  # Each example's logit depends on its own map only, so one vjp gives every ∂y_b^c/∂A_b.
  alpha = grads.astype(jnp.float32).mean(axis=(1, 2))                               # eq. 2
  cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", fmap.astype(jnp.float32), alpha))    # eq. 3
  return logits, cam


def grad_cam(model: nnx.Module | nnx.GraphDef, params: Any, images: jax.Array, class_index, *,
             upsample: bool = True) -> jax.Array:
  """Grad-CAM of `images` [B, H, W, C] for `class_index` (int or [B]), in eval mode (running BatchNorm statistics).

  `model` is a module and `params` None (use its own) or a state that replaces
  part of it (e.g. trained `nnx.Param`s); or `model` is a GraphDef and `params`
  the state(s) `nnx.split` gave, e.g. `(state["params"], state["model_state"])`
  from the trainer. The module passed in is not modified.

  Returns float32 [B, H, W], bilinearly upsampled to the image as Selvaraju et
  al. do (`upsample=False`: [B, h, w] at feature-map resolution). Not normalised.
  """
  states = params if isinstance(params, tuple) else (() if params is None else (params,))
  if isinstance(model, nnx.GraphDef):
    module = nnx.merge(model, *states)
  else:
    module = nnx.merge(*nnx.split(model))
    if states:
      nnx.update(module, *states)
  module.eval()
  _, cam = logits_and_cam(module, module.features_map(images), class_index)
  if upsample:
    cam = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")
  return cam
