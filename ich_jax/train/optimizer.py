"""Optimizer and learning-rate schedule from config."""
from __future__ import annotations

import optax


def schedule(config, total_steps: int) -> optax.Schedule:
  """`config.schedule`: "cosine" (seed 003: cosine annealing), "constant", or "step"."""
  lr = float(config.learning_rate)
  warmup = int(config.get("warmup_steps", 0))
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1),
                                              end_value=lr * float(config.get("end_factor", 0.0)))
  if config.schedule == "constant":
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
  raise ValueError(f"config optimizer.schedule={config.schedule!r}; expected cosine, constant or step")


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
  clip = config.get("grad_clip_norm", None)
  return optax.chain(optax.clip_by_global_norm(float(clip)), tx) if clip else tx
