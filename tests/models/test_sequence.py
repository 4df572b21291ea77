"""Seed 003's sequence models: shapes, gradients, the stage inputs, and independence from padding."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models.sequence import SeqGRU1, SeqGRU2, stage_features
from tests.models.fast_init import finite, materialize


# Tiny widths; noise > 0 randomises biases and BatchNorm statistics, without
# which a GRU fed zeros stays at zero and a wrong backward start goes unseen.
def _seq1(**kw):
  return materialize(lambda: SeqGRU1(num_classes=6, in_channels=8, rngs=nnx.Rngs(0), widths=(16, 8), hidden=4, **kw),
                     noise=0.5)


def _seq2(**kw):
  return materialize(lambda: SeqGRU2(num_classes=6, in_channels=3, rngs=nnx.Rngs(0), widths=(8, 8, 8, 8), hidden=4,
                                     **kw), seed=1, noise=0.5)


def _pad(a, length, fill):
  """Pads axis 1 of `a` to `length` with `fill` (garbage: what a padded batch may hold)."""
  out = np.full((a.shape[0], length) + a.shape[2:], fill, np.float32)
  out[:, :a.shape[1]] = a
  return out


def test_registered_with_the_trainer_protocol():
  for name, cls in (("seq_gru_1", SeqGRU1), ("seq_gru_2", SeqGRU2)):
    model = nnx.eval_shape(lambda n=name: models.build(n, num_classes=6, in_channels=3, rngs=nnx.Rngs(0)))
    assert isinstance(model, cls)


def test_seq_gru_1_shapes_and_finite_gradients():
  model = _seq1(num_feature_sets=2)
  model.train()
  feats = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7, 2, 8)), jnp.float32)
  mask = jnp.arange(7)[None] < jnp.array([[7], [4], [1]])

  def loss_fn(m):
    logits = m(feats, mask)
    return jnp.mean(logits ** 2), logits

  (_, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
  assert logits.shape == (3, 7, 6)
  assert finite(grads) and finite(logits)
  assert not np.asarray(logits)[~np.asarray(mask)].any()
  with pytest.raises(ValueError, match="num_feature_sets=2"):
    model(feats[:, :, 0], mask)


def test_seq_gru_2_shapes_and_finite_gradients():
  model = _seq2()
  model.train()
  rng = np.random.default_rng(0)
  preds = jnp.asarray(rng.random((3, 7, 3, 6)), jnp.float32)
  gap = jnp.full((3, 7), 5.0)
  mask = jnp.arange(7)[None] < jnp.array([[7], [4], [1]])

  def loss_fn(m):
    logits = m(preds, gap, mask)
    return jnp.mean(logits ** 2), logits

  (_, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
  assert logits.shape == (3, 7, 6)
  assert finite(grads) and finite(logits)
  with pytest.raises(ValueError, match=r"\[B, S, 3 models, 6 classes\]"):
    model(preds[:, :, :2], gap, mask)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_seq_gru_1_ignores_padding(mode):
  # Eval: a batch of a 5-slice series padded to 9 with NaN and a full 9-slice
  # series; the short one's outputs equal those of it run alone, unpadded.
  # Train (no dropout): BatchNorm batch statistics must skip the padding too.
  model = _seq1(dropout=0.0)
  getattr(model, mode)()
  rng = np.random.default_rng(1)
  short, full = rng.normal(size=(1, 5, 8)), rng.normal(size=(1, 9, 8))
  batch = np.concatenate([_pad(short, 9, np.nan), full]) if mode == "eval" else _pad(short, 9, np.nan)
  mask = np.arange(9)[None] < np.array([[5], [9]])[:len(batch)]
  run = nnx.jit(lambda m, x, mask: m(x, mask))
  alone = run(model, jnp.asarray(short, jnp.float32), None)
  padded = run(model, jnp.asarray(batch), jnp.asarray(mask))
  np.testing.assert_allclose(padded[0, :5], alone[0], rtol=1e-5, atol=1e-6)
  assert not np.asarray(padded[0, 5:]).any()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_seq_gru_2_ignores_padding(mode):
  model = _seq2()
  getattr(model, mode)()
  rng = np.random.default_rng(2)
  preds, gap = rng.random((1, 5, 3, 6)), np.array([[5.0, 5.0, 2.5, 2.5, 2.5]])
  run = nnx.jit(lambda m, p, g, mask: m(p, g, mask))
  alone = run(model, jnp.asarray(preds, jnp.float32), jnp.asarray(gap, jnp.float32), None)
  # 1e6 predictions and NaN gaps in the padding: a leak would show.
  padded = run(model, jnp.asarray(_pad(preds, 12, 1e6)), jnp.asarray(_pad(gap, 12, np.nan)),
               jnp.asarray(np.arange(12)[None] < 5))
  np.testing.assert_allclose(padded[0, :5], alone[0], rtol=1e-5, atol=1e-6)
  assert not np.asarray(padded[0, 5:]).any()


def test_stage_features_are_mean_differences_predictions_and_gap():
  # Two models, one class, one slice: p = (0.2, 0.6), gap 5 → [mean, p1−p2, p2−p1, p1, p2, gap].
  got = stage_features(jnp.array([[[[0.2], [0.6]]]]), jnp.array([[5.0]]))
  np.testing.assert_allclose(got[0, 0, 0], [0.4, -0.4, 0.4, 0.2, 0.6, 5.0], rtol=1e-6)
