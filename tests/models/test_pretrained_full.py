"""The ten classifiers at full size against timm and Keras themselves (slow; needs the reference frameworks).

  pip install torch torchvision timm keras      # test-only, not ich-jax's dependencies
  KERAS_BACKEND=jax python -m pytest -m slow tests/models/test_pretrained_full.py

Each network is built by its reference with random weights (BatchNorm
statistics randomised too, so they matter), saved as that framework publishes
(timm: safetensors; Keras: legacy .h5), loaded into ich-jax and compared on one
image at the reference input size. CI checks the same loaders on small networks
with recorded logits (test_pretrained.py); this is the full-size proof.
"""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from ich_jax import models

pytestmark = pytest.mark.slow

TIMM = {"resnet18": "resnet18", "resnet50": "resnet50", "legacy_seresnext50_32x4d": "se_resnext50_32x4d",
        "legacy_seresnext101_32x4d": "se_resnext101_32x4d", "densenet121": "densenet121",
        "densenet169": "densenet169", "mobilenetv2_100": "mobilenet_v2", "vgg19": "vgg19", "vgg19_bn": "vgg19_bn",
        "inception_resnet_v2": "inception_resnet_v2"}
KERAS = {"DenseNet121": "densenet121", "MobileNetV2": "mobilenet_v2", "VGG19": "vgg19",
         "InceptionResNetV2": "inception_resnet_v2"}


def _compare(ours: str, path, x_nhwc: np.ndarray, want: np.ndarray, **options) -> None:
  from tests.models.test_pretrained import _logits
  model = models.build(ours, num_classes=1000, in_channels=3, rngs=nnx.Rngs(0), pretrained=str(path), **options)
  got = _logits(model, x_nhwc)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))


@pytest.mark.parametrize("timm_name", sorted(TIMM))
def test_timm_network_at_full_size(timm_name, tmp_path):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  from safetensors.torch import save_file
  model = timm.create_model(timm_name, pretrained=False).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
      elif name.endswith("running_mean"):
        t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
  size = 299 if timm_name == "inception_resnet_v2" else 224
  x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  _compare(TIMM[timm_name], tmp_path / "w.safetensors", x, want)


@pytest.mark.parametrize("keras_name", sorted(KERAS))
def test_keras_application_at_full_size(keras_name, tmp_path):
  keras = pytest.importorskip("keras")
  import h5py
  from keras.src.legacy.saving import legacy_h5_format
  size = 299 if keras_name == "InceptionResNetV2" else 224
  model = getattr(keras.applications, keras_name)(weights=None, classifier_activation=None)
  rng = np.random.default_rng(0)
  for layer in model.layers:
    for w in layer.weights:
      if w.path.endswith("moving_variance"):
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
      elif w.path.endswith("moving_mean"):
        w.assign(rng.normal(0, 0.1, w.shape).astype(np.float32))
  with h5py.File(tmp_path / "w.h5", "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  x = rng.uniform(0, 1, (1, size, size, 3)).astype(np.float32)
  want = np.asarray(model(x, training=False))
  options = {"variant": "keras"} if KERAS[keras_name] in ("densenet121", "mobilenet_v2") else {}
  _compare(KERAS[keras_name], tmp_path / "w.h5", x, want, **options)
