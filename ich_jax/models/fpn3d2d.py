"""Seed 001's hybrid 3D/2D feature pyramid (Fig. 2): the backbone of its Mask R-CNN.

A 3D contracting (bottom-up) arm reads a stack of 5 neighbouring slices
[B, 5, H, W, C]; a 2D expanding (top-down) arm produces the feature pyramid of
the centre slice. From Fig. 2's caption: in-plane subsampling by 1×2×2 strided
convolutions; z subsampling by 2×1×1 convolutions with valid padding; standard
residual bottleneck blocks (1×1–3×3–1×1, ref. 15: He et al.) beside plain 3×3
convolutions; 3D levels join the 2D arm by "projection-residual" additions, a
projection mapping a level's N slices and C channels to 1 slice and 128
channels. Returned: {"p2", "p3", "p4", "p5"} at strides 4, 8, 16, 32, 128
channels each — one level per anchor scale (the paper's anchors are 16, 32,
64 and 128 px; the detector head comes with the detector).

Where Fig. 2's drawing (not in our text copy) would fix a number, the choice
here is marked. The 3D arm: a stride-2 stem then four levels, each
`down` (1×3×3 conv, stride 1×2×2) → `zred` (2×1×1 valid conv: one slice fewer)
→ bottleneck block(s); with 5 slices the levels hold 5, 4, 3, 2 and 1 slices,
so the deepest level is already 2D. Conv–BatchNorm units start from He et
al.'s initialisation, as seed 001 (Methods) says its weights did.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import ConvBN
from ich_jax.models.unet import upsample2x


class Bottleneck(nnx.Module):
  """ResNet bottleneck (1×1 → 3×3 → 1×1, BatchNorm, ReLU after the sum), 2D or 3D by `rank`.

  The shortcut is the identity when widths agree, else a 1×1 conv + BatchNorm
  (ResNet's projection shortcut). The inner width is a quarter of the output.
  """

  def __init__(self, cin: int, cout: int, *, rank: int, rngs: nnx.Rngs, dtype=None):
    one, three = (1,) * rank, (3,) * rank
    mid = max(cout // 4, 1)
    self.convs = nnx.List([ConvBN(cin, mid, one, rngs=rngs, dtype=dtype),
                           ConvBN(mid, mid, three, rngs=rngs, dtype=dtype),
                           ConvBN(mid, cout, one, act=None, rngs=rngs, dtype=dtype)])
    self.shortcut = ConvBN(cin, cout, one, act=None, rngs=rngs, dtype=dtype) if cin != cout else nnx.data(None)

  def __call__(self, x):
    y = x
    for conv in self.convs:
      y = conv(y)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Level3D(nnx.Module):
  """One level of the contracting arm: in-plane stride-2 conv, z reduction while more than one slice, bottlenecks."""

  def __init__(self, cin: int, cout: int, *, slices_in: int, kernel: Sequence[int], blocks: int,
               rngs: nnx.Rngs, dtype=None):
    self.down = ConvBN(cin, cout, kernel, stride=(1, 2, 2), rngs=rngs, dtype=dtype)
    self.zred = (ConvBN(cout, cout, (2, 1, 1), padding="VALID", rngs=rngs, dtype=dtype) if slices_in > 1
                 else nnx.data(None))
    self.slices = max(slices_in - 1, 1)
    self.blocks = nnx.List([Bottleneck(cout, cout, rank=3, rngs=rngs, dtype=dtype) for _ in range(blocks)])

  def __call__(self, x):
    x = self.down(x)
    if self.zred is not None:
      x = self.zred(x)
    for block in self.blocks:
      x = block(x)
    return x


@register("hybrid_fpn_3d2d")
class HybridFPN3D2D(nnx.Module):
  """[B, num_slices, H, W, in_channels] → {"p2".."p5": [B, H/s, W/s, pyramid_width]}; H, W multiples of 32.

  `widths` are the 3D arm's channels at strides 2, 4, 8, 16, 32 (the paper
  gives only the pyramid's 128; ResNet-like doubling from 32 is chosen here to
  fit a 5×512×512 stack on one GPU). `blocks` bottlenecks per level.
  `num_classes` is accepted for the registry's protocol and unused: this is
  the backbone; the detection head that classifies comes later.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, num_slices: int = 5,
               widths: Sequence[int] = (32, 64, 128, 256, 512), blocks: int = 1, pyramid_width: int = 128,
               dtype=None):
    del num_classes
    if len(widths) != 5:
      raise ValueError(f"hybrid_fpn_3d2d: widths {tuple(widths)} should give 5 levels (strides 2 to 32)")
    self.num_slices = num_slices
    # Stem at stride 2: a 3×3×3 conv (the caption's 3×3 filters, in 3D) with a
    # 1×2×2 stride; 'same' in z, so all slices are kept for the z reductions.
    self.stem = Level3D(in_channels, widths[0], slices_in=1, kernel=(3, 3, 3), blocks=blocks, rngs=rngs, dtype=dtype)
    levels, slices = [], [num_slices]
    for cin, cout in itertools.pairwise(widths):
      levels.append(Level3D(cin, cout, slices_in=slices[-1], kernel=(1, 3, 3), blocks=blocks, rngs=rngs, dtype=dtype))
      slices.append(levels[-1].slices)
    self.levels = nnx.List(levels)
    # Projection: an N×1×1 valid conv takes a level's N slices and C channels to
    # one slice of `pyramid_width` channels (Fig. 2B); with a bias, as FPN's
    # lateral 1×1 convs.
    self.proj = nnx.List([nnx.Conv(c, pyramid_width, (n, 1, 1), padding="VALID", dtype=dtype, rngs=rngs)
                          for c, n in zip(widths[1:], slices[1:])])
    # The 2D arm: after each projection-residual addition, bottleneck block(s);
    # the result is both the pyramid level and the input of the next upsampling.
    self.merge = nnx.List([nnx.List([Bottleneck(pyramid_width, pyramid_width, rank=2, rngs=rngs, dtype=dtype)
                                     for _ in range(blocks)]) for _ in widths[1:]])

  def __call__(self, x) -> dict[str, jax.Array]:
    if x.ndim != 5 or x.shape[1] != self.num_slices:
      raise ValueError(f"hybrid_fpn_3d2d: input {x.shape} should be [B, {self.num_slices} slices, H, W, C]")
    h, w = x.shape[2:4]
    if h % 32 or w % 32:
      raise ValueError(f"hybrid_fpn_3d2d: slices {h}×{w} are not a multiple of 32 (five stride-2 levels)")
    feats = []
    x = self.stem(x)
    for level in self.levels:
      x = level(x)
      feats.append(x)
    pyramid, top = {}, None
    for i in reversed(range(len(feats))):
      lateral = self.proj[i](feats[i])[:, 0]
      top = lateral if top is None else upsample2x(top) + lateral
      for block in self.merge[i]:
        top = block(top)
      pyramid[f"p{i + 2}"] = top
    return dict(sorted(pyramid.items()))


@register("hybrid_fpn_3d2d_seg")
class HybridFPNSegmenter(nnx.Module):
  """The hybrid FPN with a per-pixel read-out: [B, H, W, num_slices·C] → logits [B, H, W, num_classes].

  Seed 001 segments with Mask R-CNN's mask head inside each detected box; until
  that detector exists here this stand-in reads the finest level,
  p2 (stride 4), with a 3×3 conv-BN-ReLU and a 1×1 conv, and resizes the
  logits bilinearly to the input, so the backbone trains on masks through the
  segmentation task exactly as the U-Nets do. A wrapper rather than code in
  the task: the task stays one contract (image → per-pixel logits) for every
  segmenter, and the backbone stays the detector's.

  The input is the pipeline's 2D channel image: the slices sit in channels,
  slice-major and in z order (seed 001's recipe `windows.SEED001_5SLICE`,
  offsets -2…2, one channel each). They are unstacked here into the
  backbone's [B, num_slices, H, W, C], so the data pipeline needs no 3D path.
  Remaining options (`widths`, `blocks`, `pyramid_width`) go to the backbone.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, num_slices: int = 5,
               pyramid_width: int = 128, dtype=None, **backbone_options):
    if in_channels % num_slices:
      raise ValueError(f"hybrid_fpn_3d2d_seg: {in_channels} input channels do not split into {num_slices} slices "
                       "(config.data.recipe should list each slice's channels, slices in z order)")
    self.num_slices = num_slices
    self.backbone = HybridFPN3D2D(num_classes=num_classes, in_channels=in_channels // num_slices, rngs=rngs,
                                  num_slices=num_slices, pyramid_width=pyramid_width, dtype=dtype,
                                  **backbone_options)
    self.head = ConvBN(pyramid_width, pyramid_width, (3, 3), rngs=rngs, dtype=dtype)
    self.out = nnx.Conv(pyramid_width, num_classes, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    stack = x.reshape(b, h, w, self.num_slices, c // self.num_slices).transpose(0, 3, 1, 2, 4)
    logits = self.out(self.head(self.backbone(stack)["p2"]))
    return jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear")
