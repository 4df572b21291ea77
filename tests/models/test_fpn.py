"""Seed 001's hybrid 3D/2D feature pyramid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models.fpn3d2d import HybridFPN3D2D
from tests.models.fast_init import finite, materialize


def _tiny(**kw):
  return materialize(lambda: HybridFPN3D2D(num_classes=6, in_channels=1, rngs=nnx.Rngs(0), widths=(4, 8, 8, 16, 16),
                                           pyramid_width=8, **kw))


def test_pyramid_shapes_gradients_and_use_of_every_slice():
  model = _tiny()
  model.train()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 32, 64, 1)), jnp.float32)

  def loss_fn(m, x):
    pyramid = m(x)
    # Only the centre sample's finest level: its input gradient shows which slices it reads.
    return sum(jnp.mean(p ** 2) for p in pyramid.values()) + pyramid["p2"][0].sum(), pyramid

  (_, pyramid), (grads, dx) = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(model, x)
  assert {k: v.shape for k, v in pyramid.items()} == {
      "p2": (2, 8, 16, 8), "p3": (2, 4, 8, 8), "p4": (2, 2, 4, 8), "p5": (2, 1, 2, 8)}
  assert finite(grads) and finite(pyramid)
  # The 3D arm gives the 2D pyramid context from all five slices (seed 001: "the
  # 5 slices immediately surrounding the ROI").
  assert (np.abs(np.asarray(dx[0])).sum(axis=(1, 2, 3)) > 0).all()


def test_contracting_arm_reduces_z_by_one_slice_per_level():
  # 2×1×1 valid convs: 5 slices at stride 2, then 4, 3, 2, 1; the projections
  # map each level's N slices to one (Fig. 2B).
  model = nnx.eval_shape(lambda: models.build("hybrid_fpn_3d2d", num_classes=6, in_channels=1, rngs=nnx.Rngs(0)))
  assert [p.kernel.shape[0] for p in model.proj] == [4, 3, 2, 1]
  assert [p.kernel.shape[-1] for p in model.proj] == [128] * 4
  assert model.levels[0].down.conv.strides == (1, 2, 2)
  assert model.levels[0].zred.conv.kernel.shape[:3] == (2, 1, 1)
  # The paper's 5×512×512 input (traced, not computed): strides 4 to 32.
  pyramid = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 5, 512, 512, 1), jnp.float32))
  assert {k: v.shape for k, v in pyramid.items()} == {
      "p2": (1, 128, 128, 128), "p3": (1, 64, 64, 128), "p4": (1, 32, 32, 128), "p5": (1, 16, 16, 128)}


def test_wrong_stack_is_a_clear_error():
  model = nnx.eval_shape(lambda: HybridFPN3D2D(num_classes=6, in_channels=1, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"should be \[B, 5 slices"):
    model(jnp.zeros((1, 3, 32, 32, 1)))
  with pytest.raises(ValueError, match="48×40 are not a multiple of 32"):
    model(jnp.zeros((1, 5, 48, 40, 1)))
