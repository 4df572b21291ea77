"""The quickstart's small CNN: its blood map and slice head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax import models


def _build(**options):
  return models.build("small_cnn", num_classes=6, in_channels=3, rngs=nnx.Rngs(0), widths=(8, 16, 24), **options)


def test_blood_map_sits_at_the_requested_stride_and_feeds_the_slice_head():
  model = _build(blood_map_stride=4)
  model.eval()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  out = model.heads(x)
  assert out["logits"].shape == (2, 6)
  assert out["mask_logits"].shape == (2, 8, 8)         # 32 / 4
  np.testing.assert_allclose(model(x), out["logits"], rtol=1e-6)
  # The slice logits depend on the blood map's maximum: raising one map cell
  # (through the mask head's bias, by a known amount) changes every logit by
  # head-weight × change, exactly.
  before = out["logits"]
  model.mask_head.bias.value = model.mask_head.bias.value + 1.0
  after = model.heads(x)["logits"]
  w = model.head.kernel.value[-2:]                    # rows for (max, log-mean-exp)
  np.testing.assert_allclose(after - before, jnp.ones((2, 2)) @ w, rtol=1e-4, atol=1e-5)


def test_without_blood_map_the_mask_is_the_last_feature_map():
  model = _build()
  model.eval()
  out = model.heads(jnp.zeros((1, 32, 32, 3)))
  assert out["mask_logits"].shape == (1, 4, 4)         # three stages: strides 2, 4, 8
  np.testing.assert_allclose(out["logits"], model.classify(model.features_map(jnp.zeros((1, 32, 32, 3)))))


def test_bad_blood_map_stride_names_the_option():
  with pytest.raises(ValueError, match="blood_map_stride=3"):
    _build(blood_map_stride=3)
