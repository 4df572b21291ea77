"""Seed 001's Mask R-CNN on the hybrid 3D/2D feature pyramid: the network (the RPN, box and mask heads).

Seed 001 ("Convolutional Neural Network"): a Mask R-CNN whose backbone is the
hybrid 3D-contracting / 2D-expanding FPN of `ich_jax.models.fpn3d2d`; region
proposals from anchors on P2–P5, ROIAlign, a box classifier and regressor, and
a mask head on the kept detections. The heads are Mask R-CNN's (He et al.
2017) with FPN (Lin et al. 2017): a shared 3×3 RPN conv with objectness and
box deltas per anchor; a two-layer MLP box head on 7×7 ROIs; four 3×3 convs,
a 2× transposed conv and a 1×1 conv per class on 14×14 ROIs for 28×28 masks.

This module is the network only: layers and how features are read at boxes.
Which proposals, targets and detections (matching, sampling, NMS) are the
detection task's (`ich_jax.train.detection`), on `ich_jax.models.boxes`.

Input: the pipeline's 2D channel image [B, H, W, num_slices·C], slices in z
order in the channels (seed 001's recipe `windows.SEED001_5SLICE`), unstacked
here to the backbone's [B, num_slices, H, W, C]. `num_slices = 1` with a
one-slice recipe is the 2D ablation: the same network on the centre slice.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ich_jax.models import boxes, register
from ich_jax.models.fpn3d2d import HybridFPN3D2D

LEVELS = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)

_HE = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def _normal(std: float):
  return nnx.initializers.normal(std)


@register("hybrid_maskrcnn")
class HybridMaskRCNN(nnx.Module):
  """[B, H, W, num_slices·C] → pyramid, RPN outputs, and box / mask head outputs at given boxes.

  `num_classes`: foreground classes K (the detection task's class groups); the
  box classifier has K + 1 outputs (background first). `ratios`: anchors per
  location (seed 001: 1:1, 1:2, 2:1). `box_head_width`: the MLP's width (1024
  in Mask R-CNN's FPN head); `mask_head_width`: the mask convs' (256).
  Remaining options (`widths`, `blocks`) go to the backbone.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, num_slices: int = 5,
               pyramid_width: int = 128, num_ratios: int = 3, box_head_width: int = 1024,
               mask_head_width: int = 256, mask_head_convs: int = 4, roi_size: int = 7, mask_roi_size: int = 14,
               sampling_ratio: int = 2, dtype=None, **backbone_options):
    if in_channels % num_slices:
      raise ValueError(f"hybrid_maskrcnn: {in_channels} input channels do not split into {num_slices} slices "
                       "(config.data.recipe should list each slice's channels, slices in z order)")
    self.num_slices, self.num_classes, self.num_ratios = num_slices, num_classes, num_ratios
    self.roi_size, self.mask_roi_size, self.sampling_ratio = roi_size, mask_roi_size, sampling_ratio
    self.backbone = HybridFPN3D2D(num_classes=num_classes, in_channels=in_channels // num_slices, rngs=rngs,
                                  num_slices=num_slices, pyramid_width=pyramid_width, dtype=dtype,
                                  **backbone_options)
    c = pyramid_width
    # RPN (Faster R-CNN §3.1, shared over levels as FPN §4.1); torchvision's
    # RPNHead initialisation, normal(0.01), so untrained objectness is ~0.5.
    self.rpn_conv = nnx.Conv(c, c, (3, 3), kernel_init=_normal(0.01), dtype=dtype, rngs=rngs)
    self.rpn_logits = nnx.Conv(c, num_ratios, (1, 1), kernel_init=_normal(0.01), dtype=dtype, rngs=rngs)
    self.rpn_deltas = nnx.Conv(c, 4 * num_ratios, (1, 1), kernel_init=_normal(0.01), dtype=dtype, rngs=rngs)
    # Box head: FPN's "2fc" head (Lin et al. §4.2) on roi_size² ROIs. He
    # initialisation (seed 001, Methods) for the hidden layers; the outputs as
    # torchvision's FastRCNNPredictor would start in Detectron (0.01 / 0.001).
    self.fc1 = nnx.Linear(roi_size * roi_size * c, box_head_width, kernel_init=_HE, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(box_head_width, box_head_width, kernel_init=_HE, dtype=dtype, rngs=rngs)
    self.cls_score = nnx.Linear(box_head_width, num_classes + 1, kernel_init=_normal(0.01), dtype=dtype, rngs=rngs)
    self.bbox_pred = nnx.Linear(box_head_width, 4 * num_classes, kernel_init=_normal(0.001), dtype=dtype,
                                rngs=rngs)
    # Mask head (Mask R-CNN Fig. 4, right): 4 × (3×3 conv, ReLU), 2× deconv, 1×1 conv per class.
    convs, cin = [], c
    for _ in range(mask_head_convs):
      convs.append(nnx.Conv(cin, mask_head_width, (3, 3), kernel_init=_HE, dtype=dtype, rngs=rngs))
      cin = mask_head_width
    self.mask_convs = nnx.List(convs)
    self.mask_up = nnx.ConvTranspose(cin, mask_head_width, (2, 2), strides=(2, 2), kernel_init=_HE, dtype=dtype,
                                     rngs=rngs)
    self.mask_out = nnx.Conv(mask_head_width, num_classes, (1, 1), kernel_init=_HE, dtype=dtype, rngs=rngs)
    # The training task's random ROI and anchor sampling (Faster R-CNN §3.1.3): a key stream in the model
    # state, so it is checkpointed with the weights and a resumed run samples as an uninterrupted one.
    self.sample_rngs = nnx.Rngs(sample=rngs.params())

  def pyramid(self, image: jax.Array) -> dict[str, jax.Array]:
    """{"p2".."p5"} of the centre slice from the channel image [B, H, W, num_slices·C]."""
    b, h, w, c = image.shape
    stack = image.reshape(b, h, w, self.num_slices, c // self.num_slices).transpose(0, 3, 1, 2, 4)
    return self.backbone(stack)

  def rpn(self, pyramid: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Objectness logits [B, A] and deltas [B, A, 4], in `boxes.pyramid_anchors`' order (level, row, col, ratio)."""
    logits, deltas = [], []
    for name in LEVELS:
      x = jax.nn.relu(self.rpn_conv(pyramid[name]))
      b = x.shape[0]
      logits.append(self.rpn_logits(x).reshape(b, -1))
      deltas.append(self.rpn_deltas(x).reshape(b, -1, 4))
    return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)

  def roi_features(self, pyramid: dict[str, jax.Array], rois: jax.Array, size: int) -> jax.Array:
    """ROIAlign of boxes [B, R, 4] (input pixels) on their FPN level (eq. 1): [B, R, size, size, C].

    Every level a box in the image can map to is sampled and the box's own
    level selected: static shapes (the per-level subsets torchvision gathers
    vary with the boxes), at up to 4× the sampling cost of the selected level.
    """
    level = boxes.roi_levels(rois)  # [B, R], 2..5
    # Levels no box inside the image can reach (eq. 1 with the whole image as the box) are skipped.
    image_size = max(pyramid["p2"].shape[1:3]) * STRIDES[0]
    top = int(np.clip(np.floor(4 + np.log2(image_size / 224.0 + 1e-6)), 2, 5))
    out = 0.0
    for k, (name, stride) in enumerate(zip(LEVELS[:top - 1], STRIDES[:top - 1]), start=2):
      feats = jax.vmap(lambda f, r, s=stride: boxes.roi_align(f, r, (size, size), sampling_ratio=self.sampling_ratio,
                                                              spatial_scale=1.0 / s))(pyramid[name], rois)
      out = out + jnp.where((level == k)[..., None, None, None], feats, 0.0)
    return out

  def box_head(self, pyramid: dict[str, jax.Array], rois: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Class logits [B, R, K + 1] (background first) and per-class deltas [B, R, K, 4] at boxes [B, R, 4]."""
    feats = self.roi_features(pyramid, rois, self.roi_size)
    b, r = rois.shape[:2]
    x = jax.nn.relu(self.fc1(feats.reshape(b, r, -1)))
    x = jax.nn.relu(self.fc2(x))
    return self.cls_score(x), self.bbox_pred(x).reshape(b, r, self.num_classes, 4)

  def mask_head(self, pyramid: dict[str, jax.Array], rois: jax.Array) -> jax.Array:
    """Mask logits [B, R, 2·mask_roi_size, 2·mask_roi_size, K] at boxes [B, R, 4]."""
    feats = self.roi_features(pyramid, rois, self.mask_roi_size)
    b, r = rois.shape[:2]
    x = feats.reshape((b * r,) + feats.shape[2:])
    for conv in self.mask_convs:
      x = jax.nn.relu(conv(x))
    x = self.mask_out(jax.nn.relu(self.mask_up(x)))
    return x.reshape((b, r) + x.shape[1:])

  def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The RPN's objectness and deltas (the detection task calls the parts; this is for shape checks)."""
    return self.rpn(self.pyramid(image))


def anchors_for(image_shape: tuple[int, int], scales: Sequence[float], ratios: Sequence[float]):
  """The anchors of `HybridMaskRCNN.rpn`'s outputs at image_shape (P2–P5, one scale per level)."""
  return boxes.pyramid_anchors(image_shape, strides=STRIDES, scales=scales, ratios=ratios)
