"""The reference classifiers: exact parameter counts, shapes, gradients, bfloat16, and the shared trainer.

Counts and shapes are traced abstractly (`jax.eval_shape`: no 144M-parameter
init, no compile); only a few small nets are compiled, at 32×32.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from tests.models.fast_init import materialize

# 3 input channels, 1000 classes: torchvision (resnet, densenet, mobilenet_v2, vgg),
# Cadene's pretrainedmodels (se_resnext), keras.applications (inception_resnet_v2, trainable only).
REFERENCE_PARAMS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "se_resnext50_32x4d": 27_559_896,
    "se_resnext101_32x4d": 48_955_416,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "inception_resnet_v2": 55_813_192,
}
# Smallest square input each takes: five stride-2 steps; Keras' valid convolutions need 75.
MIN_SIZE = {"inception_resnet_v2": 75}


def _size(name):
  return MIN_SIZE.get(name, 32)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_count_and_protocol_shapes(name):
  size, info = _size(name), {}

  def build_and_run(x):
    model = models.build(name, num_classes=1000, in_channels=3, rngs=nnx.Rngs(0), mask_head=True)
    info["num_features"] = model.num_features
    fmap = model.features_map(x)
    return (nnx.state(model, nnx.Param), nnx.state(model.mask_head, nnx.Param),
            fmap, model.pooled(fmap), model.classify(fmap), model.mask_logits(fmap), model(x))

  params, mask_params, fmap, pooled, logits, mask_logits, direct = jax.eval_shape(
      build_and_run, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  # The opt-in mask head (a 1×1 conv with bias) is the only addition to the reference network.
  assert _count(mask_params) == fmap.shape[-1] + 1
  assert _count(params) - _count(mask_params) == REFERENCE_PARAMS[name]
  assert fmap.ndim == 4 and fmap.shape[0] == 2
  assert pooled.shape == (2, info["num_features"])
  assert logits.shape == direct.shape == (2, 1000)
  assert mask_logits.shape == fmap.shape[:3]


def test_mask_head_is_opt_in_with_a_clear_error():
  model = nnx.eval_shape(lambda: models.build("resnet18", num_classes=6, in_channels=3, rngs=nnx.Rngs(0)))
  assert model.mask_head is None
  with pytest.raises(ValueError, match="mask_head=True"):
    model.mask_logits(jnp.zeros((1, 1, 1, 512)))


def test_inception_resnet_v2_at_reference_size_and_minimum():
  def run(x299, x75):
    model = models.build("inception_resnet_v2", num_classes=6, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least 75"):
      model.features_map(jnp.zeros((1, 74, 74, 3)))
    return model.features_map(x299), model.features_map(x75)

  big, small = jax.eval_shape(run, *(jax.ShapeDtypeStruct((1, n, n, 3), jnp.float32) for n in (299, 75)))
  assert big.shape == (1, 8, 8, 1536) and small.shape == (1, 1, 1, 1536)


def test_dtype_option_is_validated():
  with pytest.raises(ValueError, match="dtype='half-ish'"):
    models.build("resnet18", num_classes=6, in_channels=3, rngs=nnx.Rngs(0), dtype="half-ish")


def _train_grads(name, *, dtype=None, in_channels=4, num_classes=6, size=32):
  """One jitted forward/backward in train mode on random data: (logits, fmap, params, grads, new state)."""
  # Weights drawn by numpy: eager init would compile a kernel per weight shape (~10 s here).
  model = materialize(lambda: models.build(name, num_classes=num_classes, in_channels=in_channels,
                                           rngs=nnx.Rngs(0), dtype=dtype))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(1), (2, size, size, in_channels))

  @jax.jit
  def step(params, rest):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      fmap = m.features_map(x)
      logits = m.classify(fmap)
      return logits.astype(jnp.float32).sum(), (logits, fmap, nnx.state(m, nnx.Not(nnx.Param)))
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return aux, grads

  (logits, fmap, new_rest), grads = step(params, rest)
  return logits, fmap, params, grads, (rest, new_rest)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_jit_grad_finite_any_channels_and_batchnorm_updates(dtype):
  # bfloat16 (model option `dtype`): activations in bfloat16; params, their
  # gradients and the running statistics stay float32.
  logits, fmap, params, grads, (rest, new_rest) = _train_grads("resnet18", dtype=dtype, in_channels=4, num_classes=6)
  compute = jnp.dtype(dtype or jnp.float32)
  assert logits.shape == (2, 6) and fmap.shape == (2, 1, 1, 512)
  assert fmap.dtype == compute and logits.dtype == compute
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.isfinite(g).all()) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
  assert {x.dtype for x in jax.tree.leaves(params) + leaves} == {jnp.dtype(jnp.float32)}
  # Train mode moves the running statistics (kept float32).
  before, after = jax.tree.leaves(nnx.state(rest, nnx.BatchStat)), jax.tree.leaves(nnx.state(new_rest, nnx.BatchStat))
  assert {x.dtype for x in after} == {jnp.dtype(jnp.float32)}
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


# Compiling a train step costs ~10 s (resnet18) to over a minute (densenet169,
# inception_resnet_v2) on the 2-core CI machine, so the trainer runs two
# representatives: a plain residual net and one with depthwise convs and dropout.
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_trains_through_the_shared_loop(name, smoke_config, tmp_path):
  from ich_jax.train import loop

  cfg = smoke_config
  cfg.model.name = name
  cfg.model.options = {"mask_head": True}   # the smoke config trains with strong labels (mask loss)
  cfg.data.image_size = _size(name)
  cfg.train.num_steps = 2
  cfg.train.log_every = 1
  cfg.train.checkpoint_every = 2
  _, state = loop.train(cfg, tmp_path)
  assert int(state["step"]) == 2
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["mask_loss"] > 0 for r in rows)
