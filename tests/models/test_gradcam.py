"""Grad-CAM (seed 003 eqs. 2–3), and its gradient under the saliency-supervision loss (seed 000 §2.1.5)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models import gradcam
from ich_jax.models.classifier import Classifier, ConvBN, pads
from ich_jax.train import losses


class Toy(Classifier):
  """Three 3×3 conv-BN-ReLU layers (the last two strided): an 8×8 map for 32×32 input; GAP, dropout, linear."""

  def __init__(self, *, num_classes=1, in_channels=1, rngs, dropout=0.0):
    self.convs = nnx.List([ConvBN(c, 16, 3, stride=s, padding=pads(1, 1), rngs=rngs)
                           for c, s in ((in_channels, 1), (16, 2), (16, 2))])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self._init_heads(fmap_channels=16, num_features=16, num_classes=num_classes, mask_head=False,
                     dtype=None, rngs=rngs)

  def features_map(self, x):
    for conv in self.convs:
      x = conv(x)
    return x

  def classify(self, fmap):
    return self.head(self.dropout(self.pooled(fmap)))


def _blobs(rng, n, size=32, radius=3.5):
  """Noise images, half with one bright disc at a random place; labels and the discs' masks."""
  yy, xx = np.mgrid[:size, :size]
  images = rng.normal(0, 0.3, (n, size, size, 1)).astype(np.float32)
  labels = (np.arange(n) % 2).astype(np.float32)
  masks = np.zeros((n, size, size), bool)
  for i in np.flatnonzero(labels):
    cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
    masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    images[i, masks[i], 0] += 2.0
  return images, labels[:, None], masks


@pytest.fixture(scope="module")
def trained_toy():
  rng = np.random.default_rng(0)
  model = Toy(rngs=nnx.Rngs(0))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, rest, opt, x, y):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      loss = optax.sigmoid_binary_cross_entropy(m(x), y).mean()
      return loss, nnx.state(m, nnx.Not(nnx.Param))
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), rest, opt, loss

  for _ in range(300):
    x, y, _ = _blobs(rng, 32)
    params, rest, opt, loss = step(params, rest, opt, x, y)
  assert float(loss) < 0.1, float(loss)
  nnx.update(model, params, rest)
  model.eval()
  return model


def test_cam_peaks_inside_the_planted_blob(trained_toy):
  images, labels, masks = _blobs(np.random.default_rng(1), 32)
  cams = np.asarray(gradcam.grad_cam(trained_toy, None, jnp.asarray(images), 0))
  assert cams.shape == (32, 32, 32)
  yy, xx = np.mgrid[:32, :32]
  for i in np.flatnonzero(labels[:, 0]):
    cam, blob = cams[i], masks[i]
    # The CAM's centre of mass falls inside the blob, and it is far brighter there than elsewhere.
    cy, cx = (cam * yy).sum() / cam.sum(), (cam * xx).sum() / cam.sum()
    assert blob[round(cy), round(cx)], (i, cy, cx)
    assert cam[blob].mean() > 3 * cam[~blob].mean()
    # Its maximum lies within one feature-map cell (4 px) of the blob: the map is
    # 8×8, so a blob 7 px across lights a plateau of cells whose argmax need not
    # be the centre one (inside the blob itself for ~75% of blobs in trials).
    py, px = np.unravel_index(cam.argmax(), cam.shape)
    assert ((yy[blob] - py) ** 2 + (xx[blob] - px) ** 2).min() <= 4 ** 2, (i, py, px)


def test_graphdef_and_states_give_the_same_cam_and_leave_the_model_alone(trained_toy):
  images = jnp.asarray(_blobs(np.random.default_rng(2), 4)[0])
  trained_toy.train()
  graphdef, params, rest = nnx.split(trained_toy, nnx.Param, ...)
  from_states = gradcam.grad_cam(graphdef, (params, rest), images, jnp.array([0, 0, 0, 0]), upsample=False)
  from_module = gradcam.grad_cam(trained_toy, None, images, 0, upsample=False)
  assert from_states.shape == (4, 8, 8)
  np.testing.assert_allclose(from_states, from_module, rtol=1e-5, atol=1e-6)
  # grad_cam runs in eval mode on a copy: the caller's train-mode module is unchanged.
  assert trained_toy.convs[0].norm.use_running_average is False
  trained_toy.eval()


def test_cam_is_eq_3_for_a_gap_linear_head():
  # With global average pooling and a linear head, ∂y^c/∂A_ij^k = w_kc / Z, so
  # eq. 2 gives α = w_c / Z and Grad-CAM is the class activation map ReLU(A·w_c)/Z.
  model = Toy(num_classes=3, rngs=nnx.Rngs(0))
  model.eval()
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  fmap = model.features_map(x)
  logits, cam = gradcam.logits_and_cam(model, fmap, 2)
  w = model.head.kernel[...][:, 2]
  expected = jax.nn.relu(jnp.einsum("bhwk,k->bhw", fmap, w)) / (8 * 8)
  np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(logits, model(x), rtol=1e-6)


# One per kind of head: GAP + linear, VGG's MLP with dropout, MobileNet's dropout + linear, SE blocks.
@pytest.mark.parametrize("name", ["densenet121", "vgg19_bn", "mobilenet_v2", "se_resnext50_32x4d"])
def test_grad_cam_runs_on_reference_classifiers(name):
  def run(x):
    model = models.build(name, num_classes=6, in_channels=3, rngs=nnx.Rngs(0))
    return gradcam.grad_cam(model, None, x, 0)

  out = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out.shape == (2, 32, 32) and out.dtype == jnp.float32


def test_saliency_loss_trains_the_backbone_in_train_mode():
  # An extra loss term: gradients reach the backbone through eq. 2 (second order),
  # and train mode (BatchNorm batch statistics, dropout in the head) is fine.
  model = Toy(num_classes=6, rngs=nnx.Rngs(0), dropout=0.2)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  target = jnp.zeros((2, 8, 8)).at[:, 2:4, 5:7].set(1.0)

  @jax.jit
  def grads(params, rest):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      _, cam = gradcam.logits_and_cam(m, m.features_map(x), 0)
      return losses.saliency_loss(cam, target), nnx.state(m, nnx.Not(nnx.Param))
    return jax.grad(loss_fn, has_aux=True)(params)

  g, new_rest = grads(params, rest)
  first_conv = g["convs"][0]["conv"]["kernel"][...]
  assert bool(jnp.isfinite(first_conv).all()) and float(jnp.abs(first_conv).max()) > 0
  # The head's dropout drew a key: its RNG counter moved.
  counts = jax.tree.leaves(nnx.state(new_rest, nnx.RngCount))
  assert any(int(a) != int(b) for a, b in zip(counts, jax.tree.leaves(nnx.state(rest, nnx.RngCount))))
