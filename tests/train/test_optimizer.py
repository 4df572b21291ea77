"""`ich_jax.train.optimizer`: learning-rate schedules at chosen steps, and Adam's weight decay and clipping,
checked against values worked out by hand from the config."""
import math

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import sequence as sequence_config
from ich_jax.train import optimizer


def _config(**kw) -> ConfigDict:
  return ConfigDict({"name": "adam", "learning_rate": 1e-3, "schedule": "constant", **kw})


def _rates(lr, steps):
  return [float(lr(s)) for s in steps]


def test_step_schedule_at_fractions_of_the_run():
  cfg = sequence_config.get_config("seq_gru_1").optimizer
  lr = optimizer.schedule(cfg, 40)  # seed 003: ×0.1 at epochs 20 and 30 of 40
  assert [float(lr(s)) for s in (19, 20, 29, 30, 39)] == pytest.approx([4e-4, 4e-5, 4e-5, 4e-6, 4e-6])


def test_step_schedule_at_boundaries_in_steps():
  lr = optimizer.schedule(_config(learning_rate=1.0, schedule="step", step_boundaries=(3, 6), step_factor=0.5), 10)
  # The boundary's own step is the first at the lower rate.
  assert _rates(lr, (0, 2, 3, 5, 6, 9)) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_cosine_with_warmup_and_an_end_factor():
  # Linear from 0 to 1e-3 over 10 steps, then half a cosine over the remaining 100 down to 1e-3 · 0.1.
  lr = optimizer.schedule(_config(schedule="cosine", warmup_steps=10, end_factor=0.1), 110)
  assert _rates(lr, (0, 5, 10, 60, 110, 200)) == pytest.approx([0.0, 5e-4, 1e-3, 1e-4 + 9e-4 / 2, 1e-4, 1e-4])
  # No warmup: the peak from step 0, and down to 0 by the last step.
  lr = optimizer.schedule(_config(schedule="cosine"), 100)
  quarter = 1e-3 * (1 + math.cos(math.pi / 4)) / 2
  assert _rates(lr, (0, 25, 50, 100)) == pytest.approx([1e-3, quarter, 5e-4, 0.0], rel=1e-6, abs=1e-12)


def test_constant_and_unknown_schedules():
  assert _rates(optimizer.schedule(_config(), 10), (0, 9, 1000)) == pytest.approx([1e-3] * 3)
  with pytest.raises(ValueError, match="optimizer.schedule='linear'; expected cosine, constant, step or plateau"):
    optimizer.schedule(_config(schedule="linear"), 10)


def _first_update(config, params, grads):
  tx = optimizer.build(config, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  return np.asarray(updates)


def test_l2_decay_enters_the_gradient_decoupled_decay_the_update():
  params, grads = np.ones(2, np.float32), np.array([0.5, -0.001], np.float32)
  # Adam's first update is -lr · g / |g| per coordinate. L2: g + wd·p = [1.5, 0.999], both positive.
  l2 = _first_update(_config(learning_rate=0.1, weight_decay=1.0), params, grads)
  np.testing.assert_allclose(l2, [-0.1, -0.1], rtol=1e-4)
  # Decoupled (AdamW): -lr · (g / |g| + wd·p) = -0.1 · ([1, -1] + [1, 1]).
  adamw = _first_update(_config(learning_rate=0.1, weight_decay=1.0, weight_decay_mode="decoupled"), params, grads)
  np.testing.assert_allclose(adamw, [-0.2, 0.0], atol=1e-5)


def test_gradients_are_clipped_to_the_global_norm_before_adam():
  params = np.zeros(2, np.float32)
  g1, g2 = np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)   # global norms 5 and 0.5

  def second_update(config):
    tx = optimizer.build(config, 10)
    _, opt_state = tx.update(g1, tx.init(params), params)
    return np.asarray(tx.update(g2, opt_state, params)[0])

  def adam_second(ratio):
    # Adam (b1 0.9, b2 0.999) after gradients a then ratio·a: -lr · m̂ / √v̂, per coordinate, over |a|.
    m = (0.9 * 0.1 + 0.1 * ratio) / (1 - 0.9 ** 2)
    v = (0.999 * 0.001 + 0.001 * ratio ** 2) / (1 - 0.999 ** 2)
    return -0.1 * m / math.sqrt(v)

  # Unclipped, g2 is a tenth of g1; clipped to norm 1, g1 becomes [0.6, 0.8] and g2 half of it.
  np.testing.assert_allclose(second_update(_config(learning_rate=0.1)), [adam_second(0.1)] * 2, rtol=1e-4)
  np.testing.assert_allclose(second_update(_config(learning_rate=0.1, grad_clip_norm=1.0)), [adam_second(0.5)] * 2,
                             rtol=1e-4)


def test_unknown_optimizer_or_decay_mode_is_named():
  with pytest.raises(ValueError, match="optimizer.name='sgd'; only 'adam' is implemented"):
    optimizer.build(_config(name="sgd"), 10)
  with pytest.raises(ValueError, match="optimizer.weight_decay_mode='coupled'; expected 'l2' or 'decoupled'"):
    optimizer.build(_config(weight_decay_mode="coupled"), 10)
