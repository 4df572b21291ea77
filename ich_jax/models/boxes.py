"""Box operations of seed 001's hybrid 3D/2D Mask R-CNN (issue 17).

Boxes are (y1, x1, y2, x2) in pixels, (y, x) order like the rest of the
codebase's [H, W, C] arrays; area is (y2 − y1)·(x2 − x1) (no +1: torchvision's
convention, not the old Detectron's). Every function is pure, jittable and has
static output shapes; padding is explicit (−1 indices, validity masks).

References: Faster R-CNN (Ren et al. 2015, §3.1.2) for the box coder and
matching; FPN (Lin et al. 2017, eq. 1) for the ROI level; Mask R-CNN (He et
al. 2017, §3) for ROIAlign, whose numerics here follow
torchvision/csrc/ops/cpu/roi_align_common.h with aligned=True (Detectron2's
ROIAlignV2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's BoxCoder.bbox_xform_clip: keeps exp(dh) below 1000/16 so an
# untrained head cannot produce inf boxes.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of boxes a [N, 4] with boxes b [M, 4]: [N, M].

  A pair whose union is empty (two degenerate boxes) has IoU 0, not NaN, so it
  neither matches nor suppresses (torchvision gives NaN, which compares false:
  the same decisions).
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.clip(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def _centre_size(boxes):
  h = boxes[..., 2] - boxes[..., 0]
  w = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode(boxes: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Regression targets (dy, dx, dh, dw) of boxes relative to anchors [..., 4].

  Faster R-CNN §3.1.2: dy = wy·(y − ya)/ha, dh = wh·log(h/ha), with weights
  (wy, wx, wh, ww) as torchvision's BoxCoder (e.g. (10, 10, 5, 5) for the ROI
  head, (1, 1, 1, 1) for the RPN).
  """
  wy, wx, wh, ww = weights
  gy, gx, gh, gw = _centre_size(boxes)
  ay, ax, ah, aw = _centre_size(anchors)
  return jnp.stack([wy * (gy - ay) / ah, wx * (gx - ax) / aw, wh * jnp.log(gh / ah), ww * jnp.log(gw / aw)], axis=-1)


def decode(deltas: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Inverse of `encode`: boxes [..., 4] from deltas (dy, dx, dh, dw).

  dh, dw are clamped at log(1000/16) before exp, as torchvision's
  BoxCoder.decode_single does.
  """
  wy, wx, wh, ww = weights
  ay, ax, ah, aw = _centre_size(anchors)
  cy = deltas[..., 0] / wy * ah + ay
  cx = deltas[..., 1] / wx * aw + ax
  h = jnp.exp(jnp.minimum(deltas[..., 2] / wh, BBOX_XFORM_CLIP)) * ah
  w = jnp.exp(jnp.minimum(deltas[..., 3] / ww, BBOX_XFORM_CLIP)) * aw
  return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def pyramid_anchors(image_shape: tuple[int, int], *, strides: Sequence[int] = (4, 8, 16, 32),
            scales: Sequence[float] = (16, 32, 64, 128),
            ratios: Sequence[float] = (1.0, 0.5, 2.0)) -> np.ndarray:
  """Anchors of a feature pyramid, one scale per level: float32 [A, 4].

  Seed 001's anchors are 16, 32, 64 and 128 px on P2–P5 (strides 4–32) with
  aspect ratios 1:1, 1:2, 2:1; at 512² that is 3·(128² + 64² + 32² + 16²) =
  65,280 anchors. Order as torchvision's AnchorGenerator: level, then row,
  column, then ratio (so a head's [H, W, ratios] outputs flatten onto it).
  `ratio` is h/w and the area is scale² for every ratio. Unlike torchvision
  (centres at i·stride, rounded base anchors) the centres sit at (i + 0.5)·stride,
  the centre of the stride×stride cell a feature covers, and sizes are not
  rounded. Built with numpy: the shapes are static, so it is a constant.
  """
  if not len(strides) == len(scales):
    raise ValueError(f"pyramid_anchors: strides={tuple(strides)} and scales={tuple(scales)} differ in length")
  out = []
  r = np.asarray(ratios, np.float64)
  for stride, scale in zip(strides, scales):
    fh, fw = -(-image_shape[0] // stride), -(-image_shape[1] // stride)
    hs, ws = scale * np.sqrt(r), scale / np.sqrt(r)
    cy = (np.arange(fh) + 0.5) * stride
    cx = (np.arange(fw) + 0.5) * stride
    cy, cx = np.meshgrid(cy, cx, indexing="ij")
    cy, cx = cy[..., None], cx[..., None]
    level = np.stack([cy - hs / 2, cx - ws / 2, cy + hs / 2, cx + ws / 2], axis=-1)
    out.append(level.reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def nms(boxes: jax.Array, scores: jax.Array, *, iou_threshold: float,
        max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy non-maximum suppression: (indices int32 [max_output], count).

  The rule of torchvision.ops.nms: in descending score order a box is kept
  unless its IoU with an already kept box is strictly greater than
  `iou_threshold`. Indices (into `boxes`) come in score order, padded with −1;
  `count` is the number of valid entries, min(kept, max_output). Equal scores
  keep the lower index first (a stable sort; torchvision leaves ties to its
  sort). The threshold is a traced value used once, on the whole [N, N] IoU
  matrix — no tiling with a baked-in threshold. To drop boxes before NMS give
  them score −inf and ignore the indices past the real ones. The [N, N] IoU
  matrix and the N-step loop are quadratic: take the pre-NMS top-k first, as
  Faster R-CNN's RPN does (torchvision: 2000 per level in training).
  """
  n = boxes.shape[0]
  order = jnp.argsort(-scores, stable=True)
  overlap = iou(boxes[order], boxes[order]) > iou_threshold

  def step(i, keep):
    # Box i survives if no earlier kept box suppresses it; later boxes only.
    alive = ~jnp.any(overlap[i] & keep & (jnp.arange(n) < i))
    return keep.at[i].set(alive)

  keep = jax.lax.fori_loop(0, n, step, jnp.zeros(n, bool))
  # Kept positions first, in score order: a stable sort on "not kept".
  slots = jnp.argsort(~keep, stable=True)[:max_output]
  count = jnp.minimum(jnp.sum(keep), max_output).astype(jnp.int32)
  if max_output > n:
    slots = jnp.concatenate([slots, jnp.zeros(max_output - n, slots.dtype)])
  idx = jnp.where(jnp.arange(max_output) < count, order[slots], -1)
  return idx.astype(jnp.int32), count


def match(gt_boxes: jax.Array, boxes: jax.Array, *, fg_threshold: float, bg_threshold: float,
          valid: jax.Array | None = None, count: jax.Array | int | None = None,
          allow_low_quality: bool = False) -> tuple[jax.Array, jax.Array]:
  """Match anchors/proposals [A, 4] to ground truth [G, 4]: (gt index [A], label [A]).

  Faster R-CNN §3.1.2: label 1 where the best IoU ≥ fg_threshold, 0 where it
  is < bg_threshold, −1 (ignored) in between; the gt index is that of the best
  ground truth for label 1, else −1. Padded ground truth — rows with
  valid=False, or at or past `count` — never matches (its IoU counts as −1).
  `allow_low_quality` also makes foreground, for each real ground truth, the
  boxes that reach its highest IoU (Faster R-CNN's "(i)" rule, torchvision's
  Matcher(allow_low_quality_matches=True)); unlike torchvision, a ground
  truth that overlaps nothing (highest IoU 0) claims nothing.
  """
  g = gt_boxes.shape[0]
  ok = jnp.ones(g, bool) if valid is None else jnp.asarray(valid, bool)
  if count is not None:
    ok = ok & (jnp.arange(g) < count)
  q = jnp.where(ok[:, None], iou(gt_boxes, boxes), -1.0)  # [G, A]
  if g == 0:
    best, arg = jnp.full(boxes.shape[0], -1.0), jnp.full(boxes.shape[0], -1, jnp.int32)
  else:
    best, arg = jnp.max(q, axis=0), jnp.argmax(q, axis=0).astype(jnp.int32)
  fg = best >= fg_threshold
  if allow_low_quality and g > 0:
    highest = jnp.max(q, axis=1, keepdims=True)
    fg = fg | jnp.any((q == highest) & (highest > 0) & ok[:, None], axis=0)
  label = jnp.where(fg, 1, jnp.where(best < bg_threshold, 0, -1)).astype(jnp.int32)
  return jnp.where(fg, arg, -1), label


def sample(key: jax.Array, labels: jax.Array, *, num_samples: int,
           positive_fraction: float) -> tuple[jax.Array, jax.Array]:
  """Balanced sampling of `num_samples` (K) boxes: (indices int32 [K], labels int32 [K]).

  Faster R-CNN §3.1.3 / torchvision's BalancedPositiveNegativeSampler: up to
  floor(K·positive_fraction) positives (label 1) drawn at random, negatives
  (label 0) fill the rest; label −1 is never drawn. Always K slots: when
  positives and negatives together fall short the remaining slots hold index
  −1 and label −1 (weight them out of the loss). Deterministic given `key`.
  """
  a = labels.shape[0]
  pos, neg = labels == 1, labels == 0
  u = jax.random.uniform(key, (a,))
  pos_order = jnp.argsort(jnp.where(pos, u, 2.0))
  neg_order = jnp.argsort(jnp.where(neg, u, 2.0))
  num_pos = jnp.minimum(jnp.sum(pos), int(num_samples * positive_fraction))
  num_neg = jnp.minimum(jnp.sum(neg), num_samples - num_pos)
  j = jnp.arange(num_samples)
  pad = max(num_samples - a, 0)
  pos_order = jnp.concatenate([pos_order, jnp.zeros(pad, pos_order.dtype)])[:num_samples]
  neg_order = jnp.concatenate([neg_order, jnp.zeros(pad, neg_order.dtype)])
  neg_take = neg_order[jnp.clip(j - num_pos, 0, neg_order.shape[0] - 1)]
  idx = jnp.where(j < num_pos, pos_order, jnp.where(j < num_pos + num_neg, neg_take, -1))
  lab = jnp.where(j < num_pos, 1, jnp.where(j < num_pos + num_neg, 0, -1))
  return idx.astype(jnp.int32), lab.astype(jnp.int32)


def roi_levels(boxes: jax.Array, *, k0: int = 4, canonical_size: float = 224.0,
               min_level: int = 2, max_level: int = 5) -> jax.Array:
  """FPN level of each box, eq. 1: k = ⌊k0 + log2(√(wh)/224)⌋ clipped to the levels; int32.

  The 1e-6 inside the log is torchvision's LevelMapper's: √(wh) of a box of
  exactly 224·2^j px can round below the boundary in float32.
  """
  s = jnp.sqrt(jnp.clip(area(boxes), 0))
  k = jnp.floor(k0 + jnp.log2(s / canonical_size + 1e-6))
  return jnp.clip(k, min_level, max_level).astype(jnp.int32)


def _bilinear_1d(coord, size):
  """One axis of torchvision's bilinear_interpolate: (low, high, w_low, w_high, inside).

  Mirrors roi_align_common.h: a sample beyond one pixel outside the map
  (coord < −1 or > size) contributes 0; otherwise coord ≤ 0 is clamped to 0,
  and at or past the last pixel both taps sit on it with weights (1, 0).
  """
  inside = (coord >= -1.0) & (coord <= size)
  c = jnp.maximum(coord, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, size - 1, low + 1)
  c = jnp.where(at_end, low.astype(c.dtype), c)
  frac = c - low
  return low, high, 1.0 - frac, frac, inside


def roi_align(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int], *,
              sampling_ratio: int, spatial_scale: float = 1.0) -> jax.Array:
  """ROIAlign (Mask R-CNN §3) of one image's features [H, W, C] at boxes [N, 4]: [N, oh, ow, C].

  Numerically torchvision.ops.roi_align(..., aligned=True) (Detectron2's
  ROIAlignV2) with boxes as (y1, x1, y2, x2) in input pixels: box·spatial_scale
  − 0.5 (the half-pixel offset that puts pixel centres at integer
  coordinates), no minimum ROI size, bin = roi size / output size,
  sampling_ratio² samples per bin at (i + 0.5)·bin/sampling_ratio, averaged.
  `sampling_ratio` must be a positive int: torchvision's adaptive default
  (≤ 0: ceil(roi/bin)) makes the sample count data-dependent, which a static
  shape cannot hold. Bilinear interpolation is separable, so each output is
  Σ wy·wx·f[y, x] over the 2×2 taps of each sample: gather the [2s, 2s]
  taps per bin and contract with the two weight vectors.
  """
  if sampling_ratio <= 0:
    raise ValueError(f"roi_align: sampling_ratio={sampling_ratio} must be > 0 (static sample count)")
  h, w, _ = features.shape
  oh, ow = output_size
  s = sampling_ratio
  b = boxes.astype(features.dtype) * spatial_scale - 0.5
  start_y, start_x = b[:, 0], b[:, 1]
  bin_h = (b[:, 2] - b[:, 0]) / oh
  bin_w = (b[:, 3] - b[:, 1]) / ow
  grid = (jnp.arange(s, dtype=features.dtype) + 0.5) / s
  # Sample coordinates [N, bins, s], as the kernel's yy / xx.
  ys = start_y[:, None, None] + (jnp.arange(oh)[None, :, None] + grid[None, None, :]) * bin_h[:, None, None]
  xs = start_x[:, None, None] + (jnp.arange(ow)[None, :, None] + grid[None, None, :]) * bin_w[:, None, None]
  y0, y1, wy0, wy1, iny = _bilinear_1d(ys, h)
  x0, x1, wx0, wx1, inx = _bilinear_1d(xs, w)
  # Taps and weights [N, bins, 2s]; an outside sample gets weight 0 on one axis,
  # which zeroes its whole 2×2 contribution as the kernel's early return does.
  yi = jnp.concatenate([y0, y1], axis=-1)
  xi = jnp.concatenate([x0, x1], axis=-1)
  wy = jnp.concatenate([wy0 * iny, wy1 * iny], axis=-1)
  wx = jnp.concatenate([wx0 * inx, wx1 * inx], axis=-1)
  n = boxes.shape[0]
  taps = features[yi.reshape(n, -1)[:, :, None], xi.reshape(n, -1)[:, None, :]]  # [N, oh·2s, ow·2s, C]
  taps = taps.reshape(n, oh, 2 * s, ow, 2 * s, -1)
  out = jnp.einsum("npa,npaqbc,nqb->npqc", wy, taps, wx)
  return out / (s * s)
