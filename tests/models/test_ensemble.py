"""Seed 000's ensemble weight model and its post-processing (§2.2.3–2.2.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models.ensemble import EnsembleWeights, combine
from tests.models.fast_init import finite, materialize


def test_combine_by_hand():
  # One case, two slices of 2×2 pixels, two base models.
  maps = np.zeros((1, 2, 2, 2, 2), np.float32)
  maps[0, 0, ..., 0] = [[0.9, 0.1], [0.0, 0.2]]
  maps[0, 0, ..., 1] = [[0.1, 0.7], [0.0, 0.4]]
  maps[0, 1, ..., 0] = [[0.5, 0.5], [0.5, 0.5]]
  maps[0, 1, ..., 1] = [[0.0, 0.0], [0.0, 1.0]]
  weights = np.array([[[0.25, 0.75], [0.5, 0.5]]], np.float32)
  out = combine(jnp.asarray(maps), jnp.asarray(weights))
  # Slice 0: 0.25·map0 + 0.75·map1 = [[0.3, 0.55], [0, 0.35]] → max 0.55.
  # Slice 1: 0.5·map0 + 0.5·map1 = [[0.25, 0.25], [0.25, 0.75]] → max 0.75.
  np.testing.assert_allclose(out.map[0, 0], [[0.3, 0.55], [0.0, 0.35]], rtol=1e-6)
  np.testing.assert_allclose(out.map[0, 1], [[0.25, 0.25], [0.25, 0.75]], rtol=1e-6)
  np.testing.assert_allclose(out.slice, [[0.55, 0.75]], rtol=1e-6)
  np.testing.assert_allclose(out.case, [0.75], rtol=1e-6)
  # Case probability is the max over valid slices only; no valid slice → 0.
  np.testing.assert_allclose(combine(maps, weights, jnp.array([[True, False]])).case, [0.55], rtol=1e-6)
  empty = combine(maps, weights, jnp.array([[False, False]]))
  np.testing.assert_array_equal(empty.case, [0.0])
  np.testing.assert_array_equal(empty.slice, [[0.0, 0.0]])


def test_weight_model_outputs_one_weight_per_base_model():
  # Five base-model maps beside a two-channel image; jit + grad in training mode.
  model = materialize(lambda: models.build("ensemble_weights", num_classes=6, in_channels=7, rngs=nnx.Rngs(0),
                                           num_models=5, widths=(4, 8)))
  assert isinstance(model, EnsembleWeights)
  model.train()
  x = jnp.asarray(np.random.default_rng(0).random((3, 16, 16, 7)), jnp.float32)

  def loss_fn(m):
    w = m(x)
    return -jnp.log(w[:, 0]).mean(), w

  (_, weights), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
  assert weights.shape == (3, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert (weights >= 0).all() and finite(grads)
  assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_more_models_than_channels_is_a_clear_error():
  with pytest.raises(ValueError, match="num_models=6 must be between 1 and in_channels=5"):
    nnx.eval_shape(lambda: EnsembleWeights(num_classes=6, in_channels=5, rngs=nnx.Rngs(0), num_models=6))
