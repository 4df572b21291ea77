"""What the reference classifiers share: the trainer's protocol, conv-BN-activation, torch-style pooling.

Every classifier here exposes (see `small_cnn` for the same protocol):
  features_map(x) → the last convolutional feature map [B, h, w, C] (Grad-CAM, saliency loss);
  pooled(fmap)    → the feature vector [B, num_features] (sequence models take it per slice);
  classify(fmap)  → logits; __call__(x) = classify(features_map(x));
  mask_logits(fmap) → [B, h, w] from a 1×1 conv, only with option `mask_head=True`:
    the reference networks have no such layer and their parameter counts must match.

Options common to all: `dtype` ("bfloat16" computes activations in bfloat16 while
parameters, batch statistics and optimizer state stay float32 — the usual
mixed-precision recipe; None keeps float32 throughout), `mask_head`, and
`preprocessing` (the input normalisation pretrained weights expect, applied
first in `features_map`: PREPROCESSING; None leaves the input as it is).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# torchvision initialises convolutions of its ResNets, DenseNets, MobileNetV2 and
# VGGs with kaiming_normal_(mode="fan_out", nonlinearity="relu"): He et al. 2015.
TORCH_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's BatchNorm2d momentum 0.1 weights the new batch; flax's weights the old average.
TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


# The preprocessing a pretrained network expects of an input in [0, 1] (ich_jax's windowed channels),
# by `config.model.pretrained_preprocessing`; per channel c, constants of channel c mod 3. "imagenet":
# torchvision's and timm's mean/std; "seed003": seed 003's public code, albumentations.Normalize with
# mean 0.456 and std 0.224 on every channel (grey windows); "keras_torch" (DenseNet), "keras_tf"
# (InceptionResNetV2, MobileNetV2: x·2 − 1), "keras_caffe" (VGG19: BGR order, x·255 − the BGR means):
# keras.applications' `preprocess_input` of each network.
PREPROCESSING = ("imagenet", "seed003", "keras_torch", "keras_tf", "keras_caffe")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def preprocessing_affine(mode: str | None, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(a, b) with input·a + b the preprocessing `mode` expects, per channel; None for no change."""
  if mode is None or mode == "none":
    return None
  if mode not in PREPROCESSING:
    raise ValueError(f"config model.pretrained_preprocessing={mode!r}; expected one of {PREPROCESSING} or None")
  idx = np.arange(channels) % 3
  if mode in ("imagenet", "keras_torch"):
    mean, std = np.array(_IMAGENET_MEAN)[idx], np.array(_IMAGENET_STD)[idx]
    a, b = 1.0 / std, -mean / std
  elif mode == "seed003":
    a, b = np.full(channels, 1 / 0.224), np.full(channels, -0.456 / 0.224)
  elif mode == "keras_tf":
    a, b = np.full(channels, 2.0), np.full(channels, -1.0)
  else:
    # Caffe's order is BGR: channel c of an RGB-ordered input lands at 2 − c; its mean is that of BGR[c].
    a, b = np.full(channels, 255.0), -np.array(_CAFFE_BGR_MEAN)[idx]
  return a.astype(np.float32), b.astype(np.float32)


def compute_dtype(dtype: Any):
  """Config value → activation dtype: None, or a name/dtype such as "bfloat16"."""
  if dtype is None:
    return None
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"model option dtype={dtype!r} is not a dtype name (e.g. 'bfloat16', 'float32')") from e


def pads(*sizes: int) -> tuple[tuple[int, int], ...]:
  """Symmetric explicit padding, as PyTorch's `padding=`: `pads(3, 3)` for a 7×7 stem."""
  return tuple((p, p) for p in sizes)


def max_pool(x, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
  """PyTorch's MaxPool2d: -inf padding on both sides; `ceil_mode` keeps a last partial window.

  Explicit because flax's "SAME" pads (0, 1) where torch pads (1, 1): output
  sizes agree, the windows do not.
  """
  extra = [0, 0]
  if ceil_mode:
    for i, n in enumerate(x.shape[1:3]):
      span = n + 2 * padding - window
      out = -(-span // stride) + 1
      # PyTorch drops a last window that would start in the right padding.
      if (out - 1) * stride >= n + padding:
        out -= 1
      extra[i] = max((out - 1) * stride + window - (n + 2 * padding), 0)
  return nnx.max_pool(x, (window, window), (stride, stride),
                      ((padding, padding + extra[0]), (padding, padding + extra[1])))


def adaptive_avg_pool(x, size: tuple[int, int]):
  """PyTorch's AdaptiveAvgPool2d: bin i of n → out covers rows floor(i·n/out) … ceil((i+1)·n/out).

  As two small averaging matrices, so it is one einsum for any input size
  (VGG's classifier expects 7×7 whatever the input; a 1×1 map is replicated).
  """

  def matrix(n: int, out: int) -> np.ndarray:
    m = np.zeros((out, n), np.float32)
    for i in range(out):
      lo, hi = (i * n) // out, -(-((i + 1) * n) // out)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return m

  my, mx = matrix(x.shape[1], size[0]), matrix(x.shape[2], size[1])
  return jnp.einsum("iy,jx,byxc->bijc", my.astype(x.dtype), mx.astype(x.dtype), x)


def _conv_or_dot(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                 preferred_element_type=None, out_sharding=None):
  """`lax.conv_general_dilated` as nnx.Conv calls it, with a 1×1 kernel over channels-last input as one dot.

  XLA:CPU (jaxlib 0.10) computes a 1×1 convolution's weight gradient as a
  convolution over the batch, with transposes of both operands around it; as
  a [pixels, Cin] × [Cin, Cout] product, forward and backward run 3–5× faster
  (docs/PERFORMANCE.md, "Models"). Same parameters, same sums.
  """
  nd = rhs.ndim - 2
  channels_last = (dimension_numbers is not None
                   and tuple(dimension_numbers.lhs_spec) == (0, nd + 1, *range(1, nd + 1)))
  ones = (1,) * nd
  if (nd == 3 and channels_last and window_strides[0] == 1 and tuple(lhs_dilation or ones) == ones
      and tuple(rhs_dilation or ones) == ones and feature_group_count == 1 and batch_group_count == 1
      and tuple(dimension_numbers.rhs_spec[:2]) == (nd + 1, nd) and out_sharding is None):
    return _conv3d_as_2d(lhs, rhs, window_strides, padding, precision, preferred_element_type)
  unpadded = padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)
  if (rhs.shape[:nd] == ones and tuple(window_strides) == ones and tuple(lhs_dilation or ones) == ones
      and tuple(rhs_dilation or ones) == ones and feature_group_count == 1 and batch_group_count == 1
      and unpadded and channels_last and tuple(dimension_numbers.rhs_spec[:2]) == (nd + 1, nd)
      and out_sharding is None):
    y = jnp.matmul(lhs.reshape(-1, lhs.shape[-1]), rhs.reshape(rhs.shape[-2:]), precision=precision,
                   preferred_element_type=preferred_element_type)
    return y.reshape(*lhs.shape[:-1], rhs.shape[-1])
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count, batch_group_count, precision,
                                      preferred_element_type, out_sharding=out_sharding)


def _conv3d_as_2d(lhs, rhs, strides, padding, precision, preferred_element_type):
  """A 3D convolution [B, D, H, W, C] * [kz, kh, kw, C, O] with z stride 1 as kz 2D convolutions, summed.

  out[z] = Σ_i conv2d(x[z + i − pad], w[i]): the same sums in another order.
  XLA:CPU's 3D convolutions, and above all their gradients, are 5–50× slower
  than the 2D ones over slices folded into the batch (seed 001's hybrid FPN:
  docs/PERFORMANCE.md, "Models"); each 2D call takes `_conv_or_dot`'s 1×1 path.
  """
  kz = rhs.shape[0]
  if isinstance(padding, str):
    total = kz - 1 if padding == "SAME" else 0
    z_pad, plane_pad = (total // 2, total - total // 2), padding
  else:
    z_pad, plane_pad = tuple(padding[0]), [tuple(p) for p in padding[1:]]
  x = jnp.pad(lhs, ((0, 0), z_pad, (0, 0), (0, 0), (0, 0))) if any(z_pad) else lhs
  b, d = x.shape[:2]
  depth = d - kz + 1
  dn = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  out = None
  for i in range(kz):
    plane = x[:, i:i + depth].reshape((b * depth,) + x.shape[2:])
    y = _conv_or_dot(plane, rhs[i], tuple(strides[1:]), plane_pad, dimension_numbers=dn, precision=precision,
                     preferred_element_type=preferred_element_type)
    out = y if out is None else out + y
  return out.reshape((b, depth) + out.shape[1:])


class Conv(nnx.Conv):
  """nnx.Conv (same parameters, same results) that runs 1×1 kernels as a matrix product and 3D kernels as
  2D convolutions (see `_conv_or_dot`)."""

  def __init__(self, *args, **kw):
    kw.setdefault("conv_general_dilated", _conv_or_dot)
    super().__init__(*args, **kw)


class _RunningStat(nnx.BatchStat):
  """A BatchStat whose whole-array assignment skips flax's sharding probe.

  flax 0.12's `Variable.__setitem__(..., value)` reads `value.sharding`; on a
  tracer jax (0.10) builds an error message by walking every equation traced so
  far, so each BatchNorm update costs O(graph) and tracing a deep network in
  train mode is quadratic (jax-ml/jax PR #40041): 25 s of the 28 s to trace
  Inception-ResNet-v2. `set_value` without an index stores the array directly.
  """

  def __setitem__(self, key, value):
    if key is Ellipsis:
      self.set_value(value)
    else:
      super().__setitem__(key, value)


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm with running statistics that trace in linear time (see `_RunningStat`), applied as x·a + b.

  flax normalises as (x − mean)·a + bias, and XLA keeps x − mean, a second
  copy of every normalised activation, for the backward pass. With
  a = scale / √(var + ε) and b = bias − mean·a folded per channel first, the
  forward pass is one multiply-add and the gradient needs only Σdy and Σdy·x
  (docs/PERFORMANCE.md, "Models"). Same statistics (flax's E[x²] − E[x]²),
  same running averages; results differ only by float rounding. A `mask`, or
  any option this path does not cover, goes through flax's own code.
  """

  def __init__(self, num_features: int, **kw):
    super().__init__(num_features, **kw)
    self.mean = _RunningStat(self.mean.get_value())
    self.var = _RunningStat(self.var.get_value())

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = self.use_running_average if use_running_average is None else use_running_average
    if (mask is not None or use_running_average is None or self.axis_name is not None or not self.use_fast_variance
        or self.axis not in (-1, x.ndim - 1) or self.scale is None or self.bias is None):
      return super().__call__(x, use_running_average, mask=mask)
    out_dtype = self.dtype or jnp.result_type(x, self.scale[...], self.bias[...])
    if self.dtype is not None:
      x = x.astype(self.dtype)
    # Statistics and the per-channel a, b in at least float32 (flax rounds them to a bfloat16 `dtype`).
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    if use_running_average:
      mean, var = self.mean[...].astype(stat_dtype), self.var[...].astype(stat_dtype)
    else:
      # As flax's _compute_stats: E[x²] − E[x]², clipped at 0.
      xs, axes = x.astype(stat_dtype), tuple(range(x.ndim - 1))
      mean, mean2 = xs.mean(axes), jnp.square(xs).mean(axes)
      var = jnp.maximum(0.0, mean2 - jnp.square(mean))
      self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
      self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    a = jax.lax.rsqrt(var + self.epsilon) * self.scale[...].astype(stat_dtype)
    y = x * a + (self.bias[...].astype(stat_dtype) - mean * a)
    return y.astype(out_dtype)


class ConvBN(nnx.Module):
  """Conv → BatchNorm → activation: the unit of every network here (conv bias only where a reference has one).

  An int `kernel` is square; a tuple sets the spatial rank (the 3D/2D FPN's
  (1, 3, 3), the sequence models' (k, 1)). `mask` in the call (broadcastable
  to the output, True where valid) keeps padded positions out of the batch
  statistics in training mode.
  """

  def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], *, stride: int | Sequence[int] = 1,
               padding: Any = "SAME", dilation: int | Sequence[int] = 1, groups: int = 1,
               act: Callable | None = jax.nn.relu, bn: dict | None = None, conv_bias: bool = False,
               kernel_init=TORCH_CONV_INIT, dtype=None, rngs: nnx.Rngs):
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    self.conv = Conv(cin, cout, kernel, strides=stride, padding=padding, kernel_dilation=dilation,
                     feature_group_count=groups, use_bias=conv_bias, kernel_init=kernel_init, dtype=dtype,
                     rngs=rngs)
    self.norm = BatchNorm(cout, dtype=dtype, rngs=rngs, **(TORCH_BN if bn is None else bn))
    self.act = act

  def __call__(self, x, mask=None):
    x = self.norm(self.conv(x), mask=mask)
    return x if self.act is None else self.act(x)


class Classifier(nnx.Module):
  """The trainer's classifier protocol; subclasses build the trunk and call `_init_heads`."""

  num_features: int

  def _init_heads(self, *, fmap_channels: int, num_features: int, num_classes: int, mask_head: bool,
                  dtype, rngs: nnx.Rngs, head: nnx.Module | None = None, preprocessing: str | None = None):
    # `head` maps pooled(fmap) to logits; a plain linear layer unless the reference has more.
    self.head = nnx.Linear(num_features, num_classes, dtype=dtype, rngs=rngs) if head is None else head
    # Per-cell blood logit for strong labels (seed 000 §2.1.5); opt-in, outside the reference count.
    self.mask_head = Conv(fmap_channels, 1, (1, 1), dtype=dtype, rngs=rngs) if mask_head else nnx.data(None)
    self.num_features = num_features
    preprocessing_affine(preprocessing, 3)     # refuses an unknown name at build time
    self.preprocessing = preprocessing

  def _prepare(self, x):
    """The input as the pretrained weights expect it (option `preprocessing`, see PREPROCESSING); x in [0, 1]."""
    affine = preprocessing_affine(getattr(self, "preprocessing", None), x.shape[-1])
    if affine is None:
      return x
    if self.preprocessing == "keras_caffe" and x.shape[-1] == 3:
      x = x[..., ::-1]          # Caffe's VGG weights take BGR
    a, b = affine
    return x * jnp.asarray(a, x.dtype) + jnp.asarray(b, x.dtype)

  def features_map(self, x):
    raise NotImplementedError

  def pooled(self, fmap):
    """Global average pooling, as every reference network here except VGG."""
    return fmap.mean(axis=(1, 2))

  def classify(self, fmap):
    return self.head(self.pooled(fmap))

  def mask_logits(self, fmap):
    """[B, h, w] blood logits at feature-map resolution."""
    if self.mask_head is None:
      raise ValueError(f"{type(self).__name__} was built without a mask head: set model option mask_head=True "
                       "to train with task.mask_loss_weight > 0")
    return self.mask_head(fmap)[..., 0]

  def __call__(self, x):
    return self.classify(self.features_map(x))
