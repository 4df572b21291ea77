"""The speed-motivated layers of classifier.py compute what flax's own do (docs/PERFORMANCE.md, "Models")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax.models.classifier import TORCH_BN, BatchNorm, Conv


def _close(a, b, tol):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel,padding,stride,groups", [
    (1, "SAME", 1, 1), (1, ((0, 0), (0, 0)), 1, 1),   # the dot path
    (1, ((1, 1), (1, 1)), 1, 1), (1, "SAME", 2, 1), (3, "SAME", 1, 1), (1, "SAME", 1, 2),   # lax's
])
def test_conv_matches_nnx_conv_values_and_gradients(kernel, padding, stride, groups):
  ref = nnx.Conv(8, 6, (kernel, kernel), strides=stride, padding=padding, feature_group_count=groups,
                 rngs=nnx.Rngs(0))
  ours = Conv(8, 6, (kernel, kernel), strides=stride, padding=padding, feature_group_count=groups,
              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 7, 8))
  _close(ours(x), ref(x), 1e-5)

  def loss(m, x):
    return (m(x) ** 2).sum()

  g_ref, g_ours = nnx.grad(loss, argnums=(0, 1))(ref, x), nnx.grad(loss, argnums=(0, 1))(ours, x)
  _close(g_ours[0].kernel[...], g_ref[0].kernel[...], 1e-4)
  _close(g_ours[1], g_ref[1], 1e-4)


def test_conv_dot_path_keeps_extra_batch_dims_3d_kernels_and_dtype():
  x = jax.random.normal(jax.random.key(1), (2, 3, 4, 5, 4))
  for kernel in [(1, 1), (1, 1, 1)]:
    ref, ours = nnx.Conv(4, 3, kernel, rngs=nnx.Rngs(0)), Conv(4, 3, kernel, rngs=nnx.Rngs(0))
    _close(ours(x), ref(x), 1e-5)
  ours = Conv(4, 3, (1, 1), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert ours(x).dtype == jnp.bfloat16


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_matches_flax_outputs_gradients_and_running_stats(train):
  x = jax.random.normal(jax.random.key(0), (4, 5, 6, 8)) * 3 + 1.5
  ref = nnx.BatchNorm(8, rngs=nnx.Rngs(0), **TORCH_BN)
  ours = BatchNorm(8, rngs=nnx.Rngs(0), **TORCH_BN)
  for m in (ref, ours):
    m.scale[...], m.bias[...] = jnp.linspace(0.5, 2, 8), jnp.linspace(-1, 1, 8)
    m.mean[...], m.var[...] = jnp.linspace(0, 1, 8), jnp.linspace(1, 2, 8)
    m.train() if train else m.eval()

  def loss(m, x):
    return (m(x) * jnp.cos(jnp.arange(8.0))).sum()

  g_ref, g_ours = nnx.grad(loss, argnums=(0, 1))(ref, x), nnx.grad(loss, argnums=(0, 1))(ours, x)
  _close(ours(x), ref(x), 1e-5)
  _close(g_ours[1], g_ref[1], 1e-5)
  _close(g_ours[0].scale[...], g_ref[0].scale[...], 1e-4)
  _close(g_ours[0].bias[...], g_ref[0].bias[...], 1e-5)
  # The calls above updated both models' running statistics alike (or neither, in eval mode).
  _close(ours.mean[...], ref.mean[...], 1e-6)
  _close(ours.var[...], ref.var[...], 1e-6)


def test_batchnorm_mask_goes_through_flax():
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
  mask = (jnp.arange(6) < 4)[None, None, :, None]
  ref, ours = nnx.BatchNorm(3, rngs=nnx.Rngs(0)), BatchNorm(3, rngs=nnx.Rngs(0))
  _close(ours(x, mask=mask), ref(x, mask=mask), 0)


@pytest.mark.parametrize("kernel,padding,stride", [
    ((3, 3, 3), "SAME", 1), ((3, 1, 1), ((1, 1), (0, 0), (0, 0)), 1),   # 2D convolutions over z
    ((3, 3, 3), "SAME", (1, 2, 2)), ((2, 3, 3), "VALID", 1), ((3, 3, 3), ((0, 2), (1, 1), (1, 1)), 1),
    ((3, 3, 3), "SAME", 2),   # z stride 2: lax's 3D convolution
])
def test_3d_conv_matches_nnx_conv_values_and_gradients(kernel, padding, stride):
  ref = nnx.Conv(4, 5, kernel, strides=stride, padding=padding, rngs=nnx.Rngs(0))
  ours = Conv(4, 5, kernel, strides=stride, padding=padding, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 6, 7, 4))
  assert ours(x).shape == ref(x).shape
  _close(ours(x), ref(x), 1e-5)

  def loss(m, x):
    return (m(x) * jnp.sin(jnp.arange(5.0))).sum()

  g_ref, g_ours = nnx.grad(loss, argnums=(0, 1))(ref, x), nnx.grad(loss, argnums=(0, 1))(ours, x)
  _close(g_ours[0].kernel[...], g_ref[0].kernel[...], 1e-4)
  _close(g_ours[1], g_ref[1], 1e-4)
