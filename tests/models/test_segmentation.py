"""Segmentation U-Nets: seed 002's U-Net and seed 000's Inception U-Net with its pre-trainable encoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models.inception_unet import (
  InceptionEncoderClassifier,
  InceptionUNet,
  load_encoder,
)
from ich_jax.models.unet import UNet
from tests.models.fast_init import finite, materialize


def _train_step(model, x):
  """jit(loss, grads, logits) in training mode: BatchNorm batch statistics, dropout on."""
  model.train()

  def loss_fn(m):
    logits = m(x)
    return jnp.mean(jax.nn.sigmoid(logits)), logits

  (_, logits), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
  return logits, grads


def test_unet_is_the_papers_24_layer_network():
  # Seed 002 §4: 24 conv layers; at width 64 with one input and one output
  # channel the authors' Keras model (model.py, from zhixuhao/unet) has
  # 31,031,685 parameters.
  model = nnx.eval_shape(lambda: models.build("unet", num_classes=1, in_channels=1, rngs=nnx.Rngs(0)))
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
  assert len(convs) == 24
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == 31_031_685


def test_unet_shapes_and_finite_gradients():
  model = materialize(lambda: UNet(num_classes=2, in_channels=3, rngs=nnx.Rngs(0), width=4))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 16, 3)), jnp.float32)
  logits, grads = _train_step(model, x)
  assert logits.shape == (2, 32, 16, 2)
  assert finite(grads) and finite(logits)
  with pytest.raises(ValueError, match="20×16 is not a multiple of 16"):
    model(jnp.zeros((1, 20, 16, 3)))


def test_inception_unet_shapes_and_finite_gradients():
  model = materialize(lambda: models.build("inception_unet", num_classes=1, in_channels=4, rngs=nnx.Rngs(0),
                                           width=8, depth=2))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 4)), jnp.float32)
  logits, grads = _train_step(model, x)
  assert logits.shape == (2, 16, 16, 1)
  assert finite(grads) and finite(logits)


def test_pretrained_encoder_loads_into_the_unet():
  # Seed 000 Model 2: the encoder is trained under a subtype head, then the
  # U-Net starts from it. Different seeds so that nothing agrees by accident.
  clf = materialize(lambda: InceptionEncoderClassifier(num_classes=6, in_channels=4, rngs=nnx.Rngs(0),
                                                       width=8, depth=2), seed=1, noise=0.5)
  unet = materialize(lambda: InceptionUNet(num_classes=1, in_channels=4, rngs=nnx.Rngs(0), width=8, depth=2), seed=2)
  decoder_before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(unet.up_blocks))]
  load_encoder(unet, clf)
  src, dst = nnx.state(clf.encoder), nnx.state(unet.encoder)
  assert jax.tree.structure(src) == jax.tree.structure(dst)
  for a, b in zip(jax.tree.leaves(src), jax.tree.leaves(dst)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(decoder_before, jax.tree.leaves(nnx.state(unet.up_blocks))):
    np.testing.assert_array_equal(a, b)
  # The classifier follows the trainer's protocol, and its feature map is the
  # U-Net's bottom after the transfer (eval mode: running statistics).
  clf.eval()
  unet.eval()
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 4)), jnp.float32)
  logits, fmap, bottom = nnx.jit(lambda c, u, x: (c(x), c.features_map(x), u.encoder(x)[1]))(clf, unet, x)
  assert logits.shape == (2, 6) and fmap.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(fmap, bottom)


def test_mismatched_encoder_is_a_clear_error():
  clf = nnx.eval_shape(lambda: InceptionEncoderClassifier(num_classes=6, in_channels=3, rngs=nnx.Rngs(0),
                                                          width=8, depth=2))
  unet = nnx.eval_shape(lambda: InceptionUNet(num_classes=1, in_channels=4, rngs=nnx.Rngs(0), width=8, depth=2))
  with pytest.raises(ValueError, match="in_channels must agree"):
    load_encoder(unet, clf)
