"""Seed 003's sequence models over the slices of a series (RSNA 2019 1st place, Fig. 1, Supp. Fig. 2b–c).

`seq_gru_1` refines per-slice CNN features with a bidirectional GRU;
`seq_gru_2` stacks the stage predictions (CNN classifiers and sequence model 1)
and the slice gap, and learns how to combine them. The paper describes the
stages; the layer sizes follow the authors' public code
(SeuTao/RSNA2019_Intracranial-Hemorrhage-Detection, SequenceModel/main.py:
hidden 96, two GRU layers, 512/128 feature projections, ratio-4 dilated convs).
The public code trains both stages as one network; here they are two models, as
in the paper's three-stage pipeline, so each can be trained and evaluated alone.

Series have different lengths. Inputs are [B, S, ...] padded at the end, with
`mask` [B, S] True at valid slices (the valid slices must be a prefix). Outputs
at valid slices do not depend on the padding: padded positions are zeroed
before every convolution (so a 'same' convolution sees exactly the zeros an
unpadded series' border would give it), kept out of BatchNorm statistics, and
the backward GRU starts at each series' last valid slice. Outputs at padded
positions are zero.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import ConvBN


def _valid(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """[B, S] bool validity; all valid without a mask."""
  return jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)


def _zero_padding(x: jax.Array, valid: jax.Array) -> jax.Array:
  """Zeros at padded slices; `where`, not a product, so NaN padding cannot leak."""
  return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


class BiGRU(nnx.Module):
  """Stacked bidirectional GRU layers (PyTorch nn.GRU(bidirectional=True, num_layers=n) semantics)."""

  def __init__(self, in_features: int, hidden: int, num_layers: int, *, rngs: nnx.Rngs, dtype=None):
    layers = []
    for i in range(num_layers):
      cin = in_features if i == 0 else 2 * hidden
      layers.append(nnx.Bidirectional(nnx.RNN(nnx.GRUCell(cin, hidden, dtype=dtype, rngs=rngs)),
                                      nnx.RNN(nnx.GRUCell(cin, hidden, dtype=dtype, rngs=rngs))))
    self.layers = nnx.List(layers)

  def __call__(self, x, valid):
    # seq_lengths makes the backward direction start at each series' last valid
    # slice (flax flip_sequences keeps the padding at the end).
    lengths = valid.sum(axis=1)
    for layer in self.layers:
      x = _zero_padding(layer(x, seq_lengths=lengths), valid)
    return x


@register("seq_gru_1")
class SeqGRU1(nnx.Module):
  """Sequence model 1: per-slice CNN features → 1×1 convolutions → two-layer bidirectional GRU → per-slice logits.

  Input [B, S, F] features of one classifier (F = in_channels), or [B, S, K, F]
  of K classifiers (`num_feature_sets=K`; the public code concatenates several
  backbones' features, each zero-padded to F). Two 1×1 convolutions (F → 512 →
  128, BatchNorm, ReLU, channel dropout) are shared by the K sets; their
  outputs are concatenated per slice. As in the public code, the logits are a
  linear read-out of the projected features plus a linear read-out of the GRU
  (a skip connection around the GRU). Returns [B, S, num_classes].
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, num_feature_sets: int = 1,
               widths: Sequence[int] = (512, 128), hidden: int = 96, num_layers: int = 2, dropout: float = 0.5,
               dtype=None):
    self.num_feature_sets = num_feature_sets
    cins = [in_channels, *widths[:-1]]
    self.proj = nnx.List([ConvBN(cin, cout, (1, 1), rngs=rngs, dtype=dtype) for cin, cout in zip(cins, widths)])
    # Dropout2d in the public code zeroes whole feature channels: the same
    # channels for every slice and every feature set.
    self.drop = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
    width = num_feature_sets * widths[-1]
    self.direct = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)
    self.gru = BiGRU(width, hidden, num_layers, rngs=rngs, dtype=dtype)
    self.gru_head = nnx.Linear(2 * hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, features, mask=None):
    x = features if features.ndim == 4 else features[:, :, None, :]
    if x.shape[2] != self.num_feature_sets:
      raise ValueError(f"seq_gru_1: features {features.shape} hold {x.shape[2]} feature sets, "
                       f"the model was built for num_feature_sets={self.num_feature_sets}")
    valid = _valid(x, mask)
    bn_mask = valid[:, :, None, None]
    x = self.drop(_zero_padding(x, valid))
    for proj in self.proj:
      x = self.drop(_zero_padding(proj(x, mask=bn_mask), valid))
    h = x.reshape(x.shape[0], x.shape[1], -1)
    logits = self.direct(h) + self.gru_head(self.gru(h, valid))
    return _zero_padding(logits, valid)


def stage_features(predictions: jax.Array, gap: jax.Array) -> jax.Array:
  """[B, S, N, C] stage probabilities and [B, S] slice gap → [B, S, C, 2N + 2] model-2 inputs.

  Channels: the mean over the N models, the N differences x_i − x_{i+1 mod N},
  the N predictions, the gap (seed 003 public code, check_oof.py `get_X` and
  the `Add_position` channel).
  """
  x = jnp.moveaxis(predictions, 2, -1)  # [B, S, C, N]
  diffs = x - jnp.roll(x, -1, axis=-1)
  g = jnp.broadcast_to(gap[:, :, None, None], x.shape[:3] + (1,)).astype(x.dtype)
  return jnp.concatenate([x.mean(-1, keepdims=True), diffs, x, g], axis=-1)


@register("seq_gru_2")
class SeqGRU2(nnx.Module):
  """Sequence model 2: stage predictions + slice gap → dilated 1D convolutions → bidirectional GRU, with a skip.

  Input `predictions` [B, S, N, C]: per-slice probabilities of N earlier-stage
  models (N = in_channels; the CNN classifiers and sequence model 1, seed 003
  §2 "stacked generalization"), and `gap` [B, S] (see `ich_jax.grid.slice_gaps`). The
  convolutions run along the slice axis, shared by the C classes (kernels k×1
  on a [slices, classes] grid, as in the public code): 5 (dilation 1) → 3
  (dilation 2) → 3 (dilation 4) → 3 (dilation 2), BatchNorm + ReLU each, widths
  512, 256, 256, 256. Logits = a 3×1 convolution of the last map (the skip)
  + a linear read-out of a two-layer bidirectional GRU over the flattened map.
  The public code names the second pair of dilated convolutions `conv_res` but
  adds no residual; neither do we. Returns [B, S, C] with C = num_classes.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs,
               widths: Sequence[int] = (512, 256, 256, 256), kernels: Sequence[int] = (5, 3, 3, 3),
               dilations: Sequence[int] = (1, 2, 4, 2), hidden: int = 96, num_layers: int = 2, dtype=None):
    self.num_models = in_channels
    self.num_classes = num_classes
    cins = [2 * in_channels + 2, *widths[:-1]]
    # Explicit symmetric padding d·(k−1)/2 (odd kernels): a valid slice near the
    # end of the series reads the same zeros whether they come from this padding
    # or from zeroed padded slices.
    if any(k % 2 == 0 for k in kernels):
      raise ValueError(f"seq_gru_2: kernels {tuple(kernels)} must be odd (symmetric padding)")
    self.convs = nnx.List([
        ConvBN(cin, cout, (k, 1), padding=((d * (k - 1) // 2,) * 2, (0, 0)), dilation=(d, 1), rngs=rngs, dtype=dtype)
        for cin, cout, k, d in zip(cins, widths, kernels, dilations)])
    self.conv_out = nnx.Conv(widths[-1], 1, (3, 1), padding=((1, 1), (0, 0)), use_bias=False, dtype=dtype, rngs=rngs)
    self.gru = BiGRU(num_classes * widths[-1], hidden, num_layers, rngs=rngs, dtype=dtype)
    self.gru_head = nnx.Linear(2 * hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, predictions, gap, mask=None):
    b, s, n, c = predictions.shape
    if n != self.num_models or c != self.num_classes:
      raise ValueError(f"seq_gru_2: predictions {predictions.shape} should be [B, S, {self.num_models} models, "
                       f"{self.num_classes} classes]")
    valid = _valid(predictions, mask)
    bn_mask = valid[:, :, None, None]
    x = _zero_padding(stage_features(predictions, gap), valid)
    for conv in self.convs:
      x = _zero_padding(conv(x, mask=bn_mask), valid)
    skip = self.conv_out(x)[..., 0]
    logits = skip + self.gru_head(self.gru(x.reshape(b, s, -1), valid))
    return _zero_padding(logits, valid)
