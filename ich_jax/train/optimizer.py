"""Optimizer and learning-rate schedule from config."""
from __future__ import annotations

import jax
import optax


def schedule(config, total_steps: int) -> optax.Schedule:
  """`config.schedule`: "cosine" (seed 003: cosine annealing), "constant", "step", or "plateau".

  "plateau" is the base rate here: the annealing depends on the losses and lives in the
  optimizer state (`build`, `plateau_scale`).
  """
  lr = float(config.learning_rate)
  warmup = int(config.get("warmup_steps", 0))
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1),
                                              end_value=lr * float(config.get("end_factor", 0.0)))
  if config.schedule in ("constant", "plateau"):
    return optax.constant_schedule(lr)
  if config.schedule == "step":
    # Seed 003's sequence models: ×0.1 at epochs 20 and 30 of 40. Boundaries in
    # steps (the first update at the lower rate, 0-based), or `step_fractions`
    # of the run (0.5, 0.75), which follow the step count.
    if config.get("step_fractions") is not None:
      boundaries = [round(float(f) * total_steps) for f in config.step_fractions]
    else:
      boundaries = [int(b) for b in config.step_boundaries]
    return optax.piecewise_constant_schedule(lr, {b: float(config.get("step_factor", 0.1)) for b in boundaries})
  raise ValueError(f"config optimizer.schedule={config.schedule!r}; expected cosine, constant, step or plateau")


def build(config, total_steps: int) -> optax.GradientTransformation:
  """Adam with weight decay, either coupled or decoupled.

  Seed 003 (§2, training) "adds a weight decay of 0.00002 to the cost function":
  an L2 term, i.e. the decay enters the gradient before Adam's scaling
  (`weight_decay_mode="l2"`, the default). "decoupled" gives AdamW.
  """
  lr = schedule(config, total_steps)
  wd = float(config.get("weight_decay", 0.0))
  mode = config.get("weight_decay_mode", "l2")
  if config.name != "adam":
    raise ValueError(f"config optimizer.name={config.name!r}; only 'adam' is implemented")
  if mode == "l2":
    tx = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999)))
  elif mode == "decoupled":
    tx = optax.adamw(lr, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999), weight_decay=wd)
  else:
    raise ValueError(f"config optimizer.weight_decay_mode={mode!r}; expected 'l2' or 'decoupled'")
  if config.schedule == "plateau":
    # Seed 001 (Methods): Adam "annealed whenever a plateau in training loss was observed". The
    # update's scale drops by `plateau_factor` when the mean training loss over `plateau_window`
    # steps has not improved (relative `plateau_rtol`) for `plateau_patience` such windows.
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=float(config.get("plateau_factor", 0.1)), patience=int(config.get("plateau_patience", 5)),
        rtol=float(config.get("plateau_rtol", 1e-2)), cooldown=int(config.get("plateau_cooldown", 0)),
        accumulation_size=int(config.get("plateau_window", 50)), min_scale=float(config.get("plateau_min_scale", 1e-3))))
  clip = config.get("grad_clip_norm", None)
  tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx) if clip else tx
  # The train step passes the loss (`value`) to every update; transforms that take no extra arguments ignore it.
  return optax.with_extra_args_support(tx)


def plateau_scale(opt_state) -> float | None:
  """The current learning-rate factor of a "plateau" schedule's state (1 until the first plateau); None otherwise."""
  for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)):
    if isinstance(leaf, optax.contrib.ReduceLROnPlateauState):
      return leaf.scale
  return None
