"""Where each parameter of an ich-jax classifier sits in timm's, torchvision's, Cadene's and Keras's files.

`_Binder` pairs a model's variables with a file's tensors by name and checks
each shape in the file's own layout; the `_<architecture>` functions walk an
ich-jax network beside the names its references publish (BINDERS), so that
`ich_jax.models.weight_files.load` can refuse a misfit before writing anything.

Layout rules: PyTorch convolutions are [out, in, kh, kw] and become flax's
[kh, kw, in, out]; linear weights are transposed; Keras kernels are already
[kh, kw, in, out] except depthwise ones ([kh, kw, C, 1] → [kh, kw, 1, C]).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
from flax import nnx

# What each first-convolution rule does with a 3-channel (RGB) kernel W[..., 3, out] for C input channels.
# "mean": every channel takes mean(W_R, W_G, W_B) · 3/C, so an image whose C channels are all v gives the
#   activation the RGB kernel gives a grey image of v (the default: CT windows are grey images).
# "repeat": timm's `adapt_input_conv`: C = 1 takes W_R + W_G + W_B; otherwise channel c takes W[c mod 3]
#   and all are scaled by 3/C.
FIRST_CONV_RULES = ("mean", "repeat")

class PretrainedError(ValueError):
  """A weight file that cannot be read, or does not fit the model it is loaded into."""


@dataclasses.dataclass
class Weights:
  """A file's tensors. torch: {name: array} as the state dict; keras: {"layer/weight": array} with the
  layer names in the file's order; ich_jax: this module's own `convert` output (nnx state paths)."""
  path: str
  convention: str            # "torch", "keras" or "ich_jax"
  tensors: dict[str, np.ndarray]
  metadata: dict[str, str] = dataclasses.field(default_factory=dict)
  layers: list[str] = dataclasses.field(default_factory=list)


class _Binder:
  """Collects (variable, array) pairs by the file's names; refuses at the first missing or mis-shaped one."""

  def __init__(self, weights: Weights, model_name: str, *, first_conv_rule: str):
    self.w, self.model_name = weights, model_name
    self.rule = first_conv_rule
    self.pairs: list[tuple[nnx.Variable, np.ndarray]] = []
    self.used: set[str] = set()
    self.notes: list[str] = []
    self._first = True

  def take(self, key: str) -> np.ndarray:
    if key not in self.w.tensors:
      near = [k for k in self.w.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]][:3]
      raise PretrainedError(f"pretrained weights {self.w.path} do not fit {self.model_name}: missing key {key!r}"
                            + (f" (the file has {near})" if near else ""))
    self.used.add(key)
    return self.w.tensors[key]

  def has(self, key: str) -> bool:
    return key in self.w.tensors

  def check(self, key: str, shape, want) -> None:
    """Refuses `key` unless its shape in the file is `want` (both in the file's layout)."""
    if tuple(shape) != tuple(want):
      raise PretrainedError(f"pretrained weights {self.w.path} do not fit {self.model_name}: key {key!r} has shape "
                            f"{tuple(shape)} where the model needs {tuple(want)}")

  def put(self, variable, array: np.ndarray, key: str) -> None:
    self.check(key, array.shape, variable.get_value().shape)
    self.pairs.append((variable, array))

  # PyTorch-named modules --------------------------------------------------------

  def conv(self, conv, key: str) -> None:
    weight = self.take(f"{key}.weight")
    kh, kw, cin_model, cout = conv.kernel.get_value().shape
    # The first convolution may take another channel count than the model's (it is adapted below).
    cin = weight.shape[1] if self._first and weight.ndim == 4 else cin_model
    self.check(f"{key}.weight", weight.shape, (cout, cin, kh, kw))
    kernel = weight.transpose(2, 3, 1, 0)
    self.put(conv.kernel, self._first_conv(kernel, f"{key}.weight", cin_model), f"{key}.weight")
    self._bias(conv, f"{key}.bias")

  def _bias(self, layer, key: str) -> None:
    if getattr(layer, "bias", None) is not None:
      self.put(layer.bias, self.take(key), key)
    elif self.has(key):
      raise PretrainedError(f"pretrained weights {self.w.path} do not fit {self.model_name}: unexpected key {key!r} "
                            "(this layer of the model has no bias)")

  def bn(self, norm, key: str) -> None:
    self._bn(norm, key, ("weight", "bias", "running_mean", "running_var"), sep=".")
    self.used.add(f"{key}.num_batches_tracked")

  def _bn(self, norm, key: str, names: tuple[str, str, str, str], sep: str) -> None:
    scale, bias, mean, var = (f"{key}{sep}{n}" for n in names)
    if norm.scale is not None:
      self.put(norm.scale, self.take(scale), scale)
    elif self.has(scale):
      # Keras's Inception-ResNet-v2 (ours) has BatchNorm(scale=False); timm's port keeps a scale, and the
      # published one (from TF-slim, also scale-free) holds ones. Any other scale has no equivalent here.
      s = self.take(scale)
      if not np.allclose(s, 1.0):
        raise PretrainedError(f"pretrained weights {self.w.path}: {self.model_name} has BatchNorm without scale "
                              f"(Keras's design); key {scale!r} holds scales other than 1 (max |s − 1| = "
                              f"{np.abs(s - 1).max():.3g}), which this model cannot represent")
    self.put(norm.bias, self.take(bias), bias)
    self.put(norm.mean, self.take(mean), mean)
    self.put(norm.var, self.take(var), var)

  def conv_bn(self, unit, conv_key: str, bn_key: str) -> None:
    self.conv(unit.conv, conv_key)
    self.bn(unit.norm, bn_key)

  def linear(self, lin, key: str, *, head: bool = False, from_conv: bool = False) -> None:
    weight = self.take(f"{key}.weight")
    cin, cout = lin.kernel.get_value().shape
    if from_conv:               # a 1×1 convolution on a 1×1 map: [out, in, 1, 1]
      self.check(f"{key}.weight", weight.shape, (cout, cin, 1, 1))
      weight = weight.reshape(weight.shape[:2])
    elif not head:
      self.check(f"{key}.weight", weight.shape, (cout, cin))
    if head and self._skip_head(lin, weight.shape[0], key, (f"{key}.weight", f"{key}.bias")):
      return
    self.put(lin.kernel, weight.T, f"{key}.weight")
    self._bias(lin, f"{key}.bias")

  def _skip_head(self, lin, file_classes: int, key: str, keys: tuple[str, ...]) -> bool:
    if lin.kernel.get_value().shape[-1] == file_classes:
      return False
    self.used.update(k for k in keys if self.has(k))
    self.notes.append(f"classifier {key!r} ({file_classes} classes) not loaded: the model has "
                      f"{lin.kernel.get_value().shape[-1]} outputs, freshly initialised")
    return True

  # Keras-named layers -------------------------------------------------------------

  def kconv(self, conv, layer: str) -> None:
    # Keras 2 files call a depthwise kernel "depthwise_kernel", Keras 3 "kernel"; both [kh, kw, C, 1].
    name = f"{layer}/depthwise_kernel" if self.has(f"{layer}/depthwise_kernel") else f"{layer}/kernel"
    kernel = self.take(name)
    groups = getattr(conv, "feature_group_count", 1)
    if groups > 1 and kernel.ndim == 4 and kernel.shape[2:] == (groups, 1):
      kernel = kernel.transpose(0, 1, 3, 2)
    self.put(conv.kernel, self._first_conv(kernel, name, conv.kernel.get_value().shape[2]), name)
    self._bias(conv, f"{layer}/bias")

  def kbn(self, norm, layer: str) -> None:
    self._bn(norm, layer, ("gamma", "beta", "moving_mean", "moving_variance"), sep="/")

  def kconv_bn(self, unit, conv_layer: str, bn_layer: str) -> None:
    self.kconv(unit.conv, conv_layer)
    self.kbn(unit.norm, bn_layer)

  def kdense(self, lin, layer: str, *, head: bool = False) -> None:
    kernel = self.take(f"{layer}/kernel")
    if head and self._skip_head(lin, kernel.shape[-1], layer, (f"{layer}/kernel", f"{layer}/bias")):
      return
    self.put(lin.kernel, kernel, f"{layer}/kernel")
    self._bias(lin, f"{layer}/bias")

  # The first convolution --------------------------------------------------------------

  def _first_conv(self, kernel: np.ndarray, key: str, c: int) -> np.ndarray:
    """The file's first kernel for the model's `c` input channels (FIRST_CONV_RULES when c ≠ 3)."""
    first, self._first = self._first, False
    if not first or kernel.shape[2] == c:
      return kernel         # only the network's first convolution sees the input channels
    rule = self.rule
    cin = kernel.shape[2]
    if cin != 3:
      raise PretrainedError(f"pretrained weights {self.w.path}: first convolution {key!r} takes {cin} channels; "
                            f"adapting it to {c} is defined for RGB (3-channel) kernels only")
    if rule == "mean":
      adapted = np.repeat(kernel.mean(axis=2, keepdims=True), c, axis=2) * (3.0 / c)
    elif rule == "repeat":
      adapted = (kernel.sum(axis=2, keepdims=True) if c == 1
                 else np.concatenate([kernel[:, :, [i % 3]] for i in range(c)], axis=2) * (3.0 / c))
    else:
      raise ValueError(f"config model.first_conv_rule={rule!r}; expected one of {FIRST_CONV_RULES}")
    self.notes.append(f"first convolution {key!r} adapted from 3 to {c} input channels by rule {rule!r}")
    return adapted.astype(np.float32)


# --- Per-architecture names ------------------------------------------------------------


def _resnet(b: _Binder, m) -> None:
  senet = b.has("layer0.conv1.weight")    # Cadene's and timm's legacy SE-ResNeXt
  b.conv_bn(m.stem, *(("layer0.conv1", "layer0.bn1") if senet else ("conv1", "bn1")))
  i = 0
  for stage, n in enumerate(m.stage_sizes):
    for j in range(n):
      block, key = m.blocks[i], f"layer{stage + 1}.{j}"
      for k, unit in enumerate(block.convs):
        b.conv_bn(unit, f"{key}.conv{k + 1}", f"{key}.bn{k + 1}")
      if block.se is not None:
        b.linear(block.se.fc1, f"{key}.se_module.fc1", from_conv=True)
        b.linear(block.se.fc2, f"{key}.se_module.fc2", from_conv=True)
      if block.shortcut is not None:
        b.conv_bn(block.shortcut, f"{key}.downsample.0", f"{key}.downsample.1")
      i += 1
  b.linear(m.head, "last_linear" if senet else "fc", head=True)


# DenseNet's names in torchvision/timm files and in Keras's: stem conv and BN, a dense layer (block b, layer l) and
# its norm/conv/norm/conv, a transition and its norm/conv, the final norm, the classifier; Keras counts blocks from 2.
_DENSENET_NAMES = {
    "torch": {"stem": ("features.conv0", "features.norm0"), "layer": "features.denseblock{b}.denselayer{l}",
              "parts": (".norm1", ".conv1", ".norm2", ".conv2"), "transition": "features.transition{b}",
              "transition_parts": (".norm", ".conv"), "final": "features.norm5", "head": "classifier", "first": 1},
    "keras": {"stem": ("conv1_conv", "conv1_bn"), "layer": "conv{b}_block{l}",
              "parts": ("_0_bn", "_1_conv", "_1_bn", "_2_conv"), "transition": "pool{b}",
              "transition_parts": ("_bn", "_conv"), "final": "bn", "head": "predictions", "first": 2},
}


def _densenet(b: _Binder, m, convention: str = "torch") -> None:
  n = _DENSENET_NAMES[convention]
  conv, bn, conv_bn, head = ((b.kconv, b.kbn, b.kconv_bn, b.kdense) if convention == "keras"
                             else (b.conv, b.bn, b.conv_bn, b.linear))
  conv_bn(m.stem, *n["stem"])
  for i, block in enumerate(m.blocks):
    for j, layer in enumerate(block):
      key = n["layer"].format(b=i + n["first"], l=j + 1)
      norm1, conv1, norm2, conv2 = (key + part for part in n["parts"])
      bn(layer.bottleneck.norm, norm1)
      conv(layer.bottleneck.conv, conv1)
      bn(layer.conv.norm, norm2)
      conv(layer.conv.conv, conv2)
    if i < len(m.transitions):
      key = n["transition"].format(b=i + n["first"])
      bn(m.transitions[i].norm, key + n["transition_parts"][0])
      conv(m.transitions[i].conv, key + n["transition_parts"][1])
  bn(m.final_norm, n["final"])
  head(m.head, n["head"], head=True)


def _densenet_keras(b: _Binder, m) -> None:
  _densenet(b, m, "keras")


def _mobilenet_v2(b: _Binder, m) -> None:
  timm = b.has("conv_stem.weight")
  layers = list(m.layers)
  stem, blocks, last = layers[0], layers[1:-1], layers[-1]
  if timm:
    b.conv_bn(stem, "conv_stem", "bn1")
    stages = [(stage, j) for stage, n in enumerate(m.stage_sizes) for j in range(n)]
    for (stage, j), block in zip(stages, blocks):
      key = f"blocks.{stage}.{j}"
      names = (("conv_dw", "bn1"), ("conv_pw", "bn2")) if len(block.layers) == 2 else (
          ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))
      for unit, (c, n) in zip(block.layers, names):
        b.conv_bn(unit, f"{key}.{c}", f"{key}.{n}")
    b.conv_bn(last, "conv_head", "bn2")
    b.linear(m.head, "classifier", head=True)
    return
  # torchvision: features.0 = conv-BN-ReLU6; features.k.conv = [expand,] depthwise (Conv2dNormActivation), then
  # the projection's conv and BN as two entries; features.18 the last conv-BN-ReLU6; classifier.1 the linear.
  b.conv_bn(stem, "features.0.0", "features.0.1")
  for k, block in enumerate(blocks, start=1):
    key = f"features.{k}.conv"
    *acts, project = block.layers
    for j, unit in enumerate(acts):
      b.conv_bn(unit, f"{key}.{j}.0", f"{key}.{j}.1")
    b.conv_bn(project, f"{key}.{len(acts)}", f"{key}.{len(acts) + 1}")
  b.conv_bn(last, f"features.{len(layers) - 1}.0", f"features.{len(layers) - 1}.1")
  b.linear(m.head, "classifier.1", head=True)


def _mobilenet_v2_keras(b: _Binder, m) -> None:
  layers = list(m.layers)
  b.kconv_bn(layers[0], "Conv1", "bn_Conv1")
  for k, block in enumerate(layers[1:-1]):
    prefix = "expanded_conv" if k == 0 else f"block_{k}"
    parts = ("depthwise", "project") if len(block.layers) == 2 else ("expand", "depthwise", "project")
    for unit, part in zip(block.layers, parts):
      b.kconv_bn(unit, f"{prefix}_{part}", f"{prefix}_{part}_BN")
  b.kconv_bn(layers[-1], "Conv_1", "Conv_1_bn")
  b.kdense(m.head, "predictions", head=True)


def _vgg(b: _Binder, m) -> None:
  timm = b.has("pre_logits.fc1.weight")
  index = 0
  for layer in m.layers:
    if layer is None:           # max pool
      index += 1
      continue
    if hasattr(layer, "norm"):  # vgg19_bn: conv, BN, ReLU
      b.conv_bn(layer, f"features.{index}", f"features.{index + 1}")
      index += 3
    else:
      b.conv(layer.conv, f"features.{index}")
      index += 2
  # fc1: torchvision's Linear(25088, 4096) flattens [C, 7, 7]; timm's is the same weights as a 7×7 conv
  # ([4096, C, 7, 7]); ours flattens [7, 7, C] (NHWC), so the kernel is permuted to (h, w, c) rows.
  key = "pre_logits.fc1" if timm else "classifier.0"
  weight = b.take(f"{key}.weight")
  c = m.fc1.kernel.get_value().shape[0] // 49
  if weight.size != m.fc1.kernel.get_value().size:
    b.put(m.fc1.kernel, weight, f"{key}.weight")      # raises with both shapes
  weight = weight.reshape(weight.shape[0], c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, -1)
  b.put(m.fc1.kernel, weight, f"{key}.weight")
  b.put(m.fc1.bias, b.take(f"{key}.bias"), f"{key}.bias")
  b.linear(m.fc2, "pre_logits.fc2" if timm else "classifier.3", from_conv=timm)
  b.linear(m.head, "head.fc" if timm else "classifier.6", head=True)


def _vgg_keras(b: _Binder, m) -> None:
  block, i = 1, 0
  for layer in m.layers:
    if layer is None:
      block, i = block + 1, 0
      continue
    i += 1
    if hasattr(layer, "norm"):
      raise PretrainedError(f"pretrained weights {b.w.path}: keras.applications has no VGG19 with BatchNorm; "
                            "load a Keras file into vgg19")
    b.kconv(layer.conv, f"block{block}_conv{i}")
  b.kdense(m.fc1, "fc1")        # Keras flattens [7, 7, C] as ich-jax does
  b.kdense(m.fc2, "fc2")
  b.kdense(m.head, "predictions", head=True)


def _inception_resnet_v2(b: _Binder, m) -> None:
  stem = [layer for layer in m.stem if not isinstance(layer, str)]
  for unit, key in zip(stem, ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a")):
    b.conv_bn(unit, f"{key}.conv", f"{key}.bn")

  def branches(module, key):
    for k, chain in enumerate(module.chains):
      single = len(chain) == 1
      for j, unit in enumerate(chain):
        if not isinstance(unit, str):
          name = f"{key}.branch{k}" if single else f"{key}.branch{k}.{j}"
          b.conv_bn(unit, f"{name}.conv", f"{name}.bn")

  def block(unit, key):
    branches(unit.branches, key)
    b.conv(unit.up, f"{key}.conv2d")

  branches(m.mixed_5b, "mixed_5b")
  for i, unit in enumerate(m.block35):
    block(unit, f"repeat.{i}")
  branches(m.mixed_6a, "mixed_6a")
  for i, unit in enumerate(m.block17):
    block(unit, f"repeat_1.{i}")
  branches(m.mixed_7a, "mixed_7a")
  for i, unit in enumerate(m.block8):
    block(unit, "block8" if i == len(m.block8) - 1 else f"repeat_2.{i}")
  b.conv_bn(m.conv_7b, "conv2d_7b.conv", "conv2d_7b.bn")
  b.linear(m.head, "classif" if b.has("classif.weight") else "last_linear", head=True)


def _inception_resnet_v2_keras(b: _Binder, m) -> None:
  # keras.applications names these layers by a creation counter ("conv2d_7", "batch_normalization_7"), and
  # lists them in topological order, not creation order; ich-jax's modules follow Keras's creation order, so
  # the n-th unnamed conv/BN pair by counter is the n-th conv_bn here. Named layers pair by name.
  def counter(prefix):
    found = []
    for layer in b.w.layers:
      match = re.fullmatch(rf"{prefix}(?:_(\d+))?", layer)
      if match:
        found.append((int(match.group(1) or 0), layer))
    return iter([name for _, name in sorted(found)])

  convs, norms = counter("conv2d"), counter("batch_normalization")

  def unit(u):
    conv, norm = next(convs, None), next(norms, None)
    if conv is None or norm is None:
      raise PretrainedError(f"pretrained weights {b.w.path} do not fit {b.model_name}: the file has fewer "
                            "conv2d/batch_normalization layers than the model")
    b.kconv_bn(u, conv, norm)

  def branches(module):
    for chain in module.chains:
      for u in chain:
        if not isinstance(u, str):
          unit(u)

  for u in m.stem:
    if not isinstance(u, str):
      unit(u)
  branches(m.mixed_5b)
  for name, blocks, reduction in (("block35", m.block35, m.mixed_6a), ("block17", m.block17, m.mixed_7a),
                                  ("block8", m.block8, None)):
    for i, blk in enumerate(blocks):
      branches(blk.branches)
      b.kconv(blk.up, f"{name}_{i + 1}_conv")
    if reduction is not None:
      branches(reduction)
  b.kconv_bn(m.conv_7b, "conv_7b", "conv_7b_bn")
  b.kdense(m.head, "predictions", head=True)


# Model name → (PyTorch-named binder, Keras-named binder or None).
BINDERS: dict[str, tuple[Callable, Callable | None]] = {
    "resnet18": (_resnet, None), "resnet50": (_resnet, None),
    "se_resnext50_32x4d": (_resnet, None), "se_resnext101_32x4d": (_resnet, None),
    "densenet121": (_densenet, _densenet_keras), "densenet169": (_densenet, _densenet_keras),
    "mobilenet_v2": (_mobilenet_v2, _mobilenet_v2_keras),
    "vgg19": (_vgg, _vgg_keras), "vgg19_bn": (_vgg, None),
    "inception_resnet_v2": (_inception_resnet_v2, _inception_resnet_v2_keras),
}

# Where each network's ImageNet weights are published, under the names the loaders read (docs/models.md).
PUBLISHED = {
    "resnet18": "timm resnet18.tv_in1k (model.safetensors); torchvision resnet18-f37072fd.pth",
    "resnet50": "timm resnet50.tv_in1k; torchvision resnet50-0676ba61.pth (IMAGENET1K_V1)",
    "se_resnext50_32x4d": "timm legacy_seresnext50_32x4d.in1k; Cadene se_resnext50_32x4d-a260b3a4.pth",
    "se_resnext101_32x4d": "timm legacy_seresnext101_32x4d.in1k; Cadene se_resnext101_32x4d-3b2fe3d8.pth",
    "densenet121": "timm densenet121.tv_in1k; torchvision densenet121-a639ec97.pth; Keras "
                   "densenet121_weights_tf_dim_ordering_tf_kernels.h5 (options.variant='keras')",
    "densenet169": "timm densenet169.tv_in1k; torchvision densenet169-b2777c0a.pth",
    "mobilenet_v2": "timm mobilenetv2_100.ra_in1k; torchvision mobilenet_v2-b0353104.pth; Keras "
                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 (options.variant='keras')",
    "vgg19": "timm vgg19.tv_in1k; torchvision vgg19-dcbb9e9d.pth; Keras "
             "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19_bn": "timm vgg19_bn.tv_in1k; torchvision vgg19_bn-c79401a0.pth",
    "inception_resnet_v2": "timm inception_resnet_v2.tf_in1k; Cadene inceptionresnetv2-520b38e4.pth; Keras "
                           "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
}
