"""Reference cases for the pretrained loaders: small networks of each family, in timm, torchvision and Keras.

`tests/models/make_pretrained_refs.py` builds each case in its reference
framework, fills every tensor with `golden_tensor(name, shape)` (a function of
the name alone, so the same file can be rewritten without that framework),
runs the reference forward pass on `golden_input` and records the names,
shapes and logits in `pretrained_refs/<case>.json`. The tests rewrite the file
in the published format (safetensors or legacy Keras .h5), load it into the
ich-jax model and compare logits with the recorded ones. The generator also
records the full-size networks' names and shapes (`pretrained_refs/full_names.json.gz`)
so every one of the ten classifiers is checked key by key at its real size.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import zlib

import numpy as np

REFS = pathlib.Path(__file__).with_name("pretrained_refs")
NUM_CLASSES = 10
TINY_VGG = (8, "M", 16, "M", 16, 16, "M", 16, "M", 16, "M")

# case → what the reference builds, and the ich-jax model that must give its logits.
#   framework: "timm", "torchvision" or "keras"; size: input H = W; ours: (registry name, constructor options).
CASES = {
    "timm_resnet18": {"framework": "timm", "size": 70, "ours": ("resnet18", {"block": "basic", "layers": (1, 1, 1, 1)})},
    "timm_resnet50": {"framework": "timm", "size": 70,
                      "ours": ("resnet50", {"block": "bottleneck", "layers": (1, 1, 1, 1)})},
    "timm_legacy_seresnext50_32x4d": {
        "framework": "timm", "size": 70,
        "ours": ("se_resnext50_32x4d", {"block": "bottleneck", "layers": (1, 1, 1, 1), "groups": 32,
                                        "width_per_group": 4, "se_reduction": 16, "ceil_pool": True})},
    "timm_densenet121": {"framework": "timm", "size": 70, "ours": ("densenet121", {"block_config": (1, 2, 1, 1)})},
    "timm_mobilenetv2_100": {"framework": "timm", "size": 70, "ours": ("mobilenet_v2", {})},
    "timm_vgg19": {"framework": "timm", "size": 70, "ours": ("vgg19", {"cfg": TINY_VGG, "fc_widths": (64, 4096)})},
    "timm_vgg19_bn": {"framework": "timm", "size": 70,
                      "ours": ("vgg19_bn", {"cfg": TINY_VGG, "fc_widths": (64, 4096)})},
    "timm_inception_resnet_v2": {"framework": "timm", "size": 75,
                                 "ours": ("inception_resnet_v2", {"repeats": (1, 1, 1)})},
    "torchvision_mobilenet_v2": {"framework": "torchvision", "size": 70, "ours": ("mobilenet_v2", {})},
    "torchvision_vgg19": {"framework": "torchvision", "size": 70,
                          "ours": ("vgg19", {"cfg": TINY_VGG, "fc_widths": (64, 32)})},
    "keras_densenet121": {"framework": "keras", "size": 70,
                          "ours": ("densenet121", {"block_config": (1, 2, 1, 1), "variant": "keras"})},
    "keras_mobilenet_v2": {"framework": "keras", "size": 70, "ours": ("mobilenet_v2", {"variant": "keras"})},
}

# The full-size networks whose names and shapes are recorded: (reference, name there) → our registry name.
FULL = {
    ("timm", "densenet121"): "densenet121", ("timm", "densenet169"): "densenet169",
    ("timm", "legacy_seresnext50_32x4d"): "se_resnext50_32x4d",
    ("timm", "legacy_seresnext101_32x4d"): "se_resnext101_32x4d",
    ("timm", "resnet18"): "resnet18", ("timm", "resnet50"): "resnet50", ("timm", "mobilenetv2_100"): "mobilenet_v2",
    ("timm", "vgg19"): "vgg19", ("timm", "vgg19_bn"): "vgg19_bn", ("timm", "inception_resnet_v2"): "inception_resnet_v2",
    ("torchvision", "densenet121"): "densenet121", ("torchvision", "mobilenet_v2"): "mobilenet_v2",
    ("torchvision", "vgg19"): "vgg19", ("torchvision", "vgg19_bn"): "vgg19_bn", ("torchvision", "resnet50"): "resnet50",
    ("keras", "DenseNet121"): "densenet121", ("keras", "MobileNetV2"): "mobilenet_v2", ("keras", "VGG19"): "vgg19",
    ("keras", "InceptionResNetV2"): "inception_resnet_v2",
}

def golden_tensor(name: str, shape, *, keras: bool = False, unit_bn_scale: bool = False) -> np.ndarray:
  """Deterministic values for tensor `name`: weights ~ N(0, 1/fan_in), BatchNorm statistics and scales near 1."""
  shape = tuple(int(s) for s in shape)
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  leaf = name.replace("/", ".").split(".")[-1]
  if leaf in ("running_var", "moving_variance"):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if leaf in ("num_batches_tracked",):
    return np.zeros(shape, np.int64)
  if len(shape) == 1:
    if leaf in ("weight", "gamma"):    # a 1-D weight is a BatchNorm scale in every network here
      return (np.ones(shape) if unit_bn_scale else rng.uniform(0.8, 1.2, shape)).astype(np.float32)
    return rng.normal(0.0, 0.1, shape).astype(np.float32)
  out = shape[-1] if keras else shape[0]
  fan_in = max(int(np.prod(shape)) // max(out, 1), 1)
  if keras and leaf == "depthwise_kernel":
    fan_in = shape[0] * shape[1]
  return rng.normal(0.0, (1.0 / fan_in) ** 0.5, shape).astype(np.float32)


def golden_input(case: str, size: int, channels: int = 3) -> np.ndarray:
  """[1, size, size, channels] (NHWC) in [0, 1)."""
  rng = np.random.default_rng(zlib.crc32(case.encode()))
  return rng.uniform(0.0, 1.0, (1, size, size, channels)).astype(np.float32)


def load_ref(case: str) -> dict:
  return json.loads((REFS / f"{case}.json").read_text())


def save_ref(case: str, record: dict) -> None:
  REFS.mkdir(exist_ok=True)
  (REFS / f"{case}.json").write_text(json.dumps(record, indent=0, sort_keys=True))


def load_full_names() -> dict:
  with gzip.open(REFS / "full_names.json.gz", "rt") as f:
    return json.load(f)


def write_safetensors(path, names_shapes, *, unit_bn_scale: bool = False) -> dict[str, np.ndarray]:
  from safetensors.numpy import save_file
  tensors = {n: golden_tensor(n, s, unit_bn_scale=unit_bn_scale) for n, s in names_shapes}
  save_file(tensors, str(path))
  return tensors


def write_keras_h5(path, layers) -> None:
  """A legacy Keras weight file as keras.applications publishes them: root attribute `layer_names`; per
  layer a group with attribute `weight_names` ("layer/kernel:0", ...) and one dataset per weight."""
  import h5py
  with h5py.File(str(path), "w") as f:
    f.attrs["layer_names"] = [name.encode() for name, _ in layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for name, weights in layers:
      group = f.create_group(name)
      group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w, _ in weights]
      for w, shape in weights:
        group.create_dataset(f"{name}/{w}:0", data=golden_tensor(f"{name}/{w}", shape, keras=True))
