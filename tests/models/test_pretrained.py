"""Pretrained loaders (ich_jax.models.weight_files, and the ich_jax.models.pretrained command) against timm's, torchvision's and Keras's own forward passes.

The reference logits were recorded by tests/models/make_pretrained_refs.py with
those frameworks; each test rewrites the weight file from the recorded names
and shapes (`pretrained_cases.golden_tensor`), so no framework is needed here.
"""
from __future__ import annotations

import functools
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ich_jax import models
from ich_jax.models import pretrained
from ich_jax.models import weight_files as P
from ich_jax.models.classifier import preprocessing_affine
from ich_jax.models.densenet import DenseNet
from ich_jax.models.inception_resnet_v2 import InceptionResNetV2
from ich_jax.models.mobilenet_v2 import MobileNetV2
from ich_jax.models.resnet import ResNet
from ich_jax.models.vgg import VGG
from tests.models import pretrained_cases as pc


def _abstract(name: str, options: dict, **kw):
  """Shapes only (fast): for loads that fill every variable, or are refused."""
  return nnx.eval_shape(lambda: _ours(name, options, **kw))


@functools.lru_cache(maxsize=None)
def _resnet_built(num_classes: int, in_channels: int):
  return _ours("resnet18", pc.CASES["timm_resnet18"]["ours"][1], num_classes=num_classes, in_channels=in_channels)


def _resnet(num_classes: int = pc.NUM_CLASSES, in_channels: int = 3):
  """A concretely initialised 1-block-per-stage resnet18, cloned from a cache (building one takes seconds)."""
  return nnx.clone(_resnet_built(num_classes, in_channels))


def _ours(name: str, options: dict, *, num_classes: int = pc.NUM_CLASSES, in_channels: int = 3, seed: int = 0):
  kw = dict(num_classes=num_classes, in_channels=in_channels, rngs=nnx.Rngs(seed), **options)
  if name.startswith(("resnet", "se_resnext")):
    return ResNet(**kw)
  if name.startswith("densenet"):
    return DenseNet(**kw)
  if name == "mobilenet_v2":
    return MobileNetV2(**kw)
  if name.startswith("vgg19"):
    return VGG(batch_norm=name.endswith("_bn"), **kw)
  return InceptionResNetV2(**kw)


def _write(case: str, tmp_path) -> str:
  ref = pc.load_ref(case)
  if "layers" in ref:
    path = tmp_path / f"{case}.h5"
    pc.write_keras_h5(path, ref["layers"])
  else:
    path = tmp_path / f"{case}.safetensors"
    pc.write_safetensors(path, ref["tensors"], unit_bn_scale=case == "timm_inception_resnet_v2")
  return str(path)


def _logits(model, x):
  """Eval-mode logits, compiled at XLA's lowest optimisation level: a second instead of ten for these nets."""
  model.eval()
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))
  return np.asarray(forward.lower(state, x).compile(_FAST_COMPILE)(state, x))


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _loaded(case: str, tmp_path):
  """The case's ich-jax network with the file loaded, built abstractly: every variable comes from the file."""
  name, options = pc.CASES[case]["ours"]
  model = nnx.eval_shape(lambda: _ours(name, options))
  weights = P.read(_write(case, tmp_path))
  binder = P._bind(weights, name, model, first_conv_rule="mean")
  assert binder.notes == [] and len(binder.pairs) == len(list(P._state_items(model)))
  for variable, array in binder.pairs:
    variable.set_value(jax.numpy.asarray(array))
  return model


@pytest.mark.parametrize("case", sorted(pc.CASES))
def test_loaded_network_gives_the_reference_frameworks_logits(case, tmp_path):
  """Every family, in each naming its reference publishes, computes what timm / torchvision / Keras computed."""
  ref = pc.load_ref(case)
  got = _logits(_loaded(case, tmp_path), pc.golden_input(case, ref["size"]))
  want = np.asarray(ref["logits"], np.float32)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def _fake(shape):
  # Shape-only stand-ins (ones: timm's Inception-ResNet-v2 scales must be 1) that cost no memory.
  return np.lib.stride_tricks.as_strided(np.ones(1, np.float32), shape=tuple(shape), strides=(0,) * len(shape))


def _full_groups() -> dict[str, list[str]]:
  """Recorded full-size networks by the ich-jax model (and variant) they load into."""
  groups: dict[str, list[str]] = {}
  for network, entry in pc.load_full_names().items():
    keras = network.startswith("keras/") and entry["ours"] in ("densenet121", "mobilenet_v2")
    groups.setdefault(entry["ours"] + (":keras" if keras else ""), []).append(network)
  return groups


@pytest.mark.parametrize("ours", sorted(_full_groups()))
def test_full_size_network_binds_every_tensor(ours):
  """All ten classifiers at their published size, in every naming recorded for them (timm, torchvision,
  Keras): every file tensor has a home and every variable a tensor."""
  name, _, variant = ours.partition(":")
  options = {"variant": variant} if variant else {}
  model = nnx.eval_shape(lambda: models.build(name, num_classes=1000, in_channels=3, rngs=nnx.Rngs(0), **options))
  count = len(list(P._state_items(model)))
  for network in _full_groups()[ours]:
    entry = pc.load_full_names()[network]
    if network.startswith("keras/"):
      tensors = {f"{layer}/{w}": _fake(s) for layer, ws in entry["layers"] for w, s in ws}
      weights = P.Weights(network, "keras", tensors, layers=[layer for layer, _ in entry["layers"]])
    else:
      weights = P.Weights(network, "torch", {k: _fake(s) for k, s in entry["tensors"]})
    binder = P._bind(weights, name, model, first_conv_rule="mean")
    assert (network, len(binder.pairs), binder.notes) == (network, count, [])


def test_other_class_count_keeps_a_fresh_head_and_says_so(tmp_path):
  path = _write("timm_resnet18", tmp_path)
  model = _resnet(num_classes=6)
  fresh_head = np.asarray(model.head.kernel.get_value()).copy()
  report = P.load(model, "resnet18", path)
  assert any("'fc' (10 classes) not loaded" in n and "6 outputs" in n for n in report.notes)
  np.testing.assert_array_equal(np.asarray(model.head.kernel.get_value()), fresh_head)
  stem = pc.golden_tensor("conv1.weight", (64, 3, 7, 7)).transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(np.asarray(model.stem.conv.kernel.get_value()), stem)


@pytest.mark.parametrize("channels,rule", [(4, "mean"), (1, "repeat"), (5, "repeat")])
def test_first_convolution_adapted_to_other_channel_counts(channels, rule, tmp_path):
  path = _write("timm_resnet18", tmp_path)
  model = _resnet(in_channels=channels)
  report = P.load(model, "resnet18", path, first_conv_rule=rule)
  assert any(f"from 3 to {channels} input channels by rule {rule!r}" in n for n in report.notes)
  rgb = pc.golden_tensor("conv1.weight", (64, 3, 7, 7)).transpose(2, 3, 1, 0)
  got = np.asarray(model.stem.conv.kernel.get_value())
  if rule == "mean":
    want = np.repeat(rgb.mean(axis=2, keepdims=True), channels, axis=2) * 3 / channels
    # A grey input (every channel v) gets the response the RGB kernel gives a grey image.
    np.testing.assert_allclose(got.sum(axis=2), rgb.sum(axis=2), rtol=1e-5, atol=1e-6)
  elif channels == 1:
    want = rgb.sum(axis=2, keepdims=True)           # timm's adapt_input_conv for one channel
  else:
    want = rgb[:, :, [0, 1, 2, 0, 1]] * 3 / 5
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _state(model) -> dict[str, np.ndarray]:
  return {k: np.asarray(v.get_value()).copy() for k, v in P._state_items(model)}


def _rewrite(src, dst, edit):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(str(src))
  edit(tensors)
  save_file(tensors, str(dst))


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("fc.bias"), "missing key 'fc.bias'"),
    (lambda t: t.update({"layer4.0.conv2.weight": np.zeros((512, 512, 1, 3), np.float32)}),
     "key 'layer4.0.conv2.weight' has shape (512, 512, 1, 3) where the model needs (512, 512, 3, 3)"),
    (lambda t: t.update({"layer5.0.conv1.weight": np.zeros((2, 2, 1, 1), np.float32)}),
     "unexpected key 'layer5.0.conv1.weight'"),
])
def test_misfitting_file_is_refused_and_nothing_is_loaded(edit, message, tmp_path):
  path = _write("timm_resnet18", tmp_path)
  bad = tmp_path / "bad.safetensors"
  _rewrite(path, bad, edit)
  model = _resnet()
  before = _state(model)
  with pytest.raises(P.PretrainedError, match="do not fit resnet18") as e:
    P.load(model, "resnet18", bad)
  assert message in str(e.value) and str(bad) in str(e.value)
  after = _state(model)
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_truncated_and_corrupt_files_are_named(tmp_path):
  path = _write("timm_resnet18", tmp_path)
  data = open(path, "rb").read()
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(P.PretrainedError, match=r"cut\.safetensors: not a readable safetensors file"):
    P.read(cut)
  h5 = tmp_path / "junk.h5"
  h5.write_bytes(b"not hdf5 at all" * 10)
  with pytest.raises(P.PretrainedError, match=r"junk\.h5: not a readable HDF5 file"):
    P.read(h5)
  with pytest.raises(P.PretrainedError, match="unknown format '.npz'"):
    (tmp_path / "w.npz").write_bytes(b"x")
    P.read(tmp_path / "w.npz")
  with pytest.raises(FileNotFoundError, match="no such file"):
    P.read(tmp_path / "absent.safetensors")


def test_pth_without_pytorch_names_the_safetensors_way(tmp_path, monkeypatch):
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"\x80\x02")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="needs PyTorch.*safetensors.*convert"):
    P.read(path)


def test_pth_state_dict_loads_like_the_safetensors_file(tmp_path):
  torch = pytest.importorskip("torch")
  ref = pc.load_ref("torchvision_mobilenet_v2")
  tensors = {k: torch.from_numpy(pc.golden_tensor(k, s)) for k, s in ref["tensors"]}
  # DataParallel's "module." prefix, as many published checkpoints carry it.
  torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}}, tmp_path / "m.pth")
  a, b = _abstract("mobilenet_v2", {}), _abstract("mobilenet_v2", {})
  P.load(a, "mobilenet_v2", tmp_path / "m.pth")
  P.load(b, "mobilenet_v2", _write("torchvision_mobilenet_v2", tmp_path))
  sa, sb = _state(a), _state(b)
  assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_old_torchvision_densenet_names_and_cadene_heads_are_read(tmp_path):
  ref = pc.load_ref("timm_densenet121")
  old = {}
  for k, s in ref["tensors"]:
    renamed = k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")
    old[renamed] = pc.golden_tensor(k, s)
  from safetensors.numpy import save_file
  save_file(old, str(tmp_path / "old.safetensors"))
  a, b = (_abstract("densenet121", {"block_config": (1, 2, 1, 1)}) for _ in range(2))
  P.load(a, "densenet121", tmp_path / "old.safetensors")
  P.load(b, "densenet121", _write("timm_densenet121", tmp_path))
  sa, sb = _state(a), _state(b)
  assert all(np.array_equal(sa[k], sb[k]) for k in sa)
  # Cadene's Inception-ResNet-v2 names timm's `classif` `last_linear`.
  ref = pc.load_ref("timm_inception_resnet_v2")
  cadene = {k.replace("classif.", "last_linear."): pc.golden_tensor(k, s, unit_bn_scale=True) for k, s in ref["tensors"]}
  save_file(cadene, str(tmp_path / "cadene.safetensors"))
  options = pc.CASES["timm_inception_resnet_v2"]["ours"][1]
  c = _abstract("inception_resnet_v2", options)
  P.load(c, "inception_resnet_v2", tmp_path / "cadene.safetensors")
  np.testing.assert_array_equal(np.asarray(c.head.kernel.get_value()),
                                cadene["last_linear.weight"].T)


def test_keras_weights_need_the_keras_variant_and_unit_scales_are_enforced(tmp_path):
  with pytest.raises(P.PretrainedError, match="options.variant='keras'"):
    P.load(_abstract("mobilenet_v2", {}), "mobilenet_v2", _write("keras_mobilenet_v2", tmp_path))
  ref = pc.load_ref("timm_inception_resnet_v2")
  path = tmp_path / "scaled.safetensors"
  pc.write_safetensors(path, ref["tensors"], unit_bn_scale=False)
  with pytest.raises(P.PretrainedError, match="BatchNorm without scale.*'conv2d_1a.bn.weight'"):
    P.load(_abstract("inception_resnet_v2", {"repeats": (1, 1, 1)}), "inception_resnet_v2", path)


def test_convert_and_inspect_commands(tmp_path, capsys):
  h5 = _write("keras_mobilenet_v2", tmp_path)
  assert pretrained.main(["inspect", h5]) == 0
  out = capsys.readouterr().out
  assert "keras names" in out and "Conv1/kernel" in out and "(3, 3, 3, 32)" in out
  converted = tmp_path / "mnv2.safetensors"
  assert pretrained.main(["convert", h5, str(converted), "--model", "mobilenet_v2"]) == 0
  a = models.build("mobilenet_v2", num_classes=pc.NUM_CLASSES, in_channels=3, rngs=nnx.Rngs(1), variant="keras",
                   pretrained=str(converted))
  b = _abstract("mobilenet_v2", {"variant": "keras"})
  P.load(b, "mobilenet_v2", h5)
  sa, sb = _state(a), _state(b)
  assert all(np.array_equal(sa[k], sb[k]) for k in sa)
  with pytest.raises(P.PretrainedError, match="converted for model 'mobilenet_v2', not 'densenet121'"):
    models.build("densenet121", num_classes=10, in_channels=3, rngs=nnx.Rngs(0), pretrained=str(converted))


@pytest.mark.parametrize("mode,pixel,want", [
    ("imagenet", (0.5, 0.5, 0.5), ((0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225)),
    ("seed003", (0.456, 1.0, 0.0), (0.0, (1 - 0.456) / 0.224, -0.456 / 0.224)),
    ("keras_tf", (0.0, 0.5, 1.0), (-1.0, 0.0, 1.0)),
    # Caffe: BGR order, 0–255 minus the BGR means; an RGB pixel (1, 0, 0) is blue 0, green 0, red 255.
    ("keras_caffe", (1.0, 0.0, 0.0), (-103.939, -116.779, 255 - 123.68)),
])
def test_pretrained_preprocessing(mode, pixel, want):
  model = _abstract("resnet18", {"block": "basic", "layers": (1, 1, 1, 1), "preprocessing": mode})
  x = np.broadcast_to(np.asarray(pixel, np.float32), (1, 2, 2, 3))
  np.testing.assert_allclose(np.asarray(model._prepare(jax.numpy.asarray(x)))[0, 0, 0], want, rtol=1e-5)
  assert preprocessing_affine(None, 3) is None
  with pytest.raises(ValueError, match="pretrained_preprocessing='bogus'"):
    _abstract("resnet18", {"block": "basic", "layers": (1, 1, 1, 1), "preprocessing": "bogus"})
