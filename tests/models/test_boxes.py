"""Box operations of seed 001's Mask R-CNN (issue 17): references written in numpy here."""
import math

import jax
import numpy as np
import pytest

from ich_jax.models import boxes as bx


def _random_boxes(rng, n, size=32.0, integer=False):
  y = rng.uniform(0, size, (n, 2))
  x = rng.uniform(0, size, (n, 2))
  if integer:
    y, x = np.round(y), np.round(x)
    y[:, 1] += (y[:, 0] == y[:, 1])
    x[:, 1] += (x[:, 0] == x[:, 1])
  return np.stack([y.min(1), x.min(1), y.max(1), x.max(1)], axis=1).astype(np.float32)


def _iou_ref(a, b):
  out = np.zeros((len(a), len(b)), np.float32)
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = np.float32(ih * iw)
      union = np.float32((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
      out[i, j] = inter / union if union > 0 else 0.0
  return out


# -- box coder ---------------------------------------------------------------

def test_encode_decode_round_trip_with_weights():
  rng = np.random.default_rng(0)
  b, a = _random_boxes(rng, 20), _random_boxes(rng, 20)
  for w in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
    np.testing.assert_allclose(bx.decode(bx.encode(b, a, w), a, w), b, atol=1e-4)


def test_encode_hand_computed_delta():
  anchor = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)  # centre (5, 10), h 10, w 20
  box = np.array([[2.0, 4.0, 22.0, 24.0]], np.float32)  # centre (12, 14), h 20, w 20
  d = bx.encode(box, anchor, (10.0, 10.0, 5.0, 5.0))
  np.testing.assert_allclose(d[0], [10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 0.0], rtol=1e-6, atol=1e-6)


def test_decode_clamps_dh_dw_before_exp():
  anchor = np.array([[0.0, 0.0, 16.0, 16.0]], np.float32)
  out = bx.decode(np.array([[0.0, 0.0, 50.0, 50.0]], np.float32), anchor)
  np.testing.assert_allclose(out[0], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)  # 16·1000/16 = 1000 px


# -- iou ---------------------------------------------------------------------

def test_iou_matches_numpy_on_random_boxes():
  rng = np.random.default_rng(1)
  a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
  out = bx.iou(a, b)
  assert out.shape == (7, 5)
  np.testing.assert_allclose(out, _iou_ref(a, b), rtol=1e-5, atol=1e-6)


def test_iou_touching_disjoint_identical_and_degenerate():
  a = np.array([[0, 0, 10, 10]], np.float32)
  b = np.array([[10, 0, 20, 10], [30, 30, 40, 40], [0, 0, 10, 10], [0, 0, 10, 5], [5, 5, 5, 5]], np.float32)
  np.testing.assert_allclose(bx.iou(a, b)[0], [0.0, 0.0, 1.0, 0.5, 0.0])
  assert bx.iou(b[4:], b[4:])[0, 0] == 0.0  # empty union: 0, not NaN


# -- anchors -----------------------------------------------------------------

def test_anchor_count_at_512():
  assert bx.pyramid_anchors((512, 512)).shape == (65_280, 4)


def test_anchor_placement_and_areas():
  a = bx.pyramid_anchors((64, 64))
  offset = 0
  for stride, scale in zip((4, 8, 16, 32), (16, 32, 64, 128)):
    n = 3 * (64 // stride) ** 2
    level = a[offset:offset + n]
    cy, cx = (level[:, 0] + level[:, 2]) / 2, (level[:, 1] + level[:, 3]) / 2
    h, w = level[:, 2] - level[:, 0], level[:, 3] - level[:, 1]
    # First location (three ratios), then the next column, then the next row.
    np.testing.assert_allclose(cy[:3], stride / 2)
    np.testing.assert_allclose(cx[:3], stride / 2)
    np.testing.assert_allclose(cx[3:6], stride * 1.5)
    np.testing.assert_allclose(cy[3 * (64 // stride)], stride * 1.5)
    np.testing.assert_allclose(h * w, scale ** 2, rtol=1e-5)
    np.testing.assert_allclose((h / w)[:3], [1.0, 0.5, 2.0], rtol=1e-5)
    offset += n
  assert offset == len(a)


# -- nms ---------------------------------------------------------------------

def _nms_ref(boxes, scores, thr):
  order = np.argsort(-scores, kind="stable")
  ious = _iou_ref(boxes, boxes)
  keep = []
  for i in order:
    if all(ious[i, k] <= np.float32(thr) for k in keep):
      keep.append(i)
  return keep


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_greedy_reference(thr):
  rng = np.random.default_rng(int(thr * 10))
  # Integer boxes on a small grid tie often; the pairs below tie exactly at thr.
  b = _random_boxes(rng, 40, size=12.0, integer=True)
  tie = np.array([[0, 0, 10, 10], [0, 0, 10, 10 * thr]], np.float32)
  b = np.concatenate([tie, b])
  s = rng.permutation(len(b)).astype(np.float32)
  s[0], s[1] = 100.0, 99.0
  assert _iou_ref(tie, tie)[0, 1] == np.float32(thr)
  want = _nms_ref(b, s, thr)
  assert 1 in want  # IoU equal to the threshold does not suppress
  idx, count = bx.nms(b, s, iou_threshold=thr, max_output=len(b))
  assert int(count) == len(want)
  np.testing.assert_array_equal(idx[:len(want)], want)
  assert np.all(np.asarray(idx[len(want):]) == -1)


def test_nms_all_suppressed_but_first_one_box_and_truncation():
  b = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [1, 0, 10, 10]], np.float32)
  idx, count = bx.nms(b, np.array([0.1, 0.9, 0.5], np.float32), iou_threshold=0.5, max_output=5)
  np.testing.assert_array_equal(idx, [1, -1, -1, -1, -1])
  assert int(count) == 1
  idx, count = bx.nms(b[:1], np.ones(1, np.float32), iou_threshold=0.5, max_output=3)
  np.testing.assert_array_equal(idx, [0, -1, -1])
  assert int(count) == 1
  far = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10], [20, 20, 21, 21]], np.float32)
  idx, count = bx.nms(far, np.array([0.1, 0.4, 0.3, 0.2], np.float32), iou_threshold=0.5, max_output=2)
  np.testing.assert_array_equal(idx, [1, 2])
  assert int(count) == 2


def test_nms_under_jit_with_traced_threshold():
  rng = np.random.default_rng(3)
  b = _random_boxes(rng, 30)
  s = rng.uniform(size=30).astype(np.float32)
  f = jax.jit(lambda b, s, t: bx.nms(b, s, iou_threshold=t, max_output=30))
  for thr in (0.3, 0.7):
    want = _nms_ref(b, s, thr)
    idx, count = f(b, s, thr)
    assert int(count) == len(want)
    np.testing.assert_array_equal(idx[:len(want)], want)


# -- roi_align ---------------------------------------------------------------

def _bilinear_ref(f, y, x):
  """torchvision's bilinear_interpolate (roi_align_kernel.cpp), one sample, all channels."""
  h, w = f.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(f.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_high = y_low = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_high = x_low = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * f[y_low, x_low] + hy * lx * f[y_low, x_high] + ly * hx * f[y_high, x_low]
          + ly * lx * f[y_high, x_high])


def _roi_align_ref(f, boxes, out_size, ratio, scale):
  """torchvision.ops.roi_align(aligned=True) in loops, boxes (y1, x1, y2, x2)."""
  oh, ow = out_size
  out = np.zeros((len(boxes), oh, ow, f.shape[2]))
  for n, (y1, x1, y2, x2) in enumerate(boxes.astype(np.float64)):
    sy, sx = y1 * scale - 0.5, x1 * scale - 0.5
    bh, bw = (y2 * scale - 0.5 - sy) / oh, (x2 * scale - 0.5 - sx) / ow
    for ph in range(oh):
      for pw in range(ow):
        acc = 0.0
        for iy in range(ratio):
          y = sy + ph * bh + (iy + 0.5) * bh / ratio
          for ix in range(ratio):
            x = sx + pw * bw + (ix + 0.5) * bw / ratio
            acc = acc + _bilinear_ref(f, y, x)
        out[n, ph, pw] = acc / (ratio * ratio)
  return out


@pytest.mark.parametrize("ratio,scale", [(2, 1.0), (3, 0.5)])
def test_roi_align_matches_torchvision_semantics(ratio, scale):
  rng = np.random.default_rng(ratio)
  f = rng.normal(size=(9, 11, 3)).astype(np.float32)
  size = np.array([9, 11, 9, 11]) / scale
  inside = rng.uniform(0, 1, (6, 4)) * size
  # Partly outside, wholly outside past the one-pixel margin, straddling the last pixel, tiny.
  extra = np.array([[-3, -2, 4, 5], [-40, -40, -20, -20], [5, 7, 30, 40], [2, 2, 2.3, 2.2]]) / scale
  b = np.concatenate([inside, extra])
  b = np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1).astype(np.float32)
  out = bx.roi_align(f, b, (3, 4), sampling_ratio=ratio, spatial_scale=scale)
  assert out.shape == (len(b), 3, 4, 3)
  np.testing.assert_allclose(out, _roi_align_ref(f, b, (3, 4), ratio, scale), rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(out[7]) == 0.0)  # every sample beyond y, x < −1


def test_roi_align_is_exact_on_a_linear_ramp():
  h, w = 16, 20
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  f = np.stack([0.5 * yy - 2.0 * xx + 3.0, 1.5 * yy + 0.25 * xx], axis=-1).astype(np.float32)
  # Boxes (input pixels at scale 0.5) whose samples stay inside [0, size − 1] in feature coordinates.
  b = np.array([[2, 2, 30, 38], [5, 9, 13, 21], [10, 3, 12, 35]], np.float32)
  oh, ow = 2, 4
  out = np.asarray(jax.jit(lambda f, b: bx.roi_align(f, b, (oh, ow), sampling_ratio=2, spatial_scale=0.5))(f, b))
  for n, (y1, x1, y2, x2) in enumerate(b * 0.5 - 0.5):
    for ph in range(oh):
      for pw in range(ow):
        cy = y1 + (ph + 0.5) * (y2 - y1) / oh
        cx = x1 + (pw + 0.5) * (x2 - x1) / ow
        np.testing.assert_allclose(out[n, ph, pw], [0.5 * cy - 2.0 * cx + 3.0, 1.5 * cy + 0.25 * cx], atol=1e-4)


# -- matching, sampling, levels ------------------------------------------------

def test_match_thresholds_and_padded_ground_truth():
  gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)  # row 2: padding
  cand = np.array([
      [0, 0, 10, 10],    # IoU 1.0 with gt 0
      [0, 0, 10, 7],     # 0.7: foreground at exactly hi
      [0, 0, 10, 5],     # 0.5: ignored
      [0, 0, 10, 3],     # 0.3: exactly lo is not < lo, so ignored
      [0, 0, 10, 2],     # 0.2: background
      [20, 20, 30, 29],  # 0.9 with gt 1
      [50, 50, 60, 60],  # nothing
  ], np.float32)
  for kw in ({"count": 2}, {"valid": np.array([True, True, False])}):
    idx, label = bx.match(gt, cand, fg_threshold=0.7, bg_threshold=0.3, **kw)
    np.testing.assert_array_equal(label, [1, 1, -1, -1, 0, 1, 0])
    np.testing.assert_array_equal(idx, [0, 0, -1, -1, -1, 1, -1])
  # Padding that overlaps perfectly still never matches, even as a low-quality match.
  idx, label = bx.match(gt[2:], cand, fg_threshold=0.7, bg_threshold=0.3, count=0, allow_low_quality=True)
  np.testing.assert_array_equal(label, [0] * 7)
  np.testing.assert_array_equal(idx, [-1] * 7)


def test_match_low_quality_gives_each_ground_truth_its_best_box():
  gt = np.array([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)
  cand = np.array([[0, 0, 10, 4], [0, 0, 10, 5], [100, 100, 110, 110]], np.float32)
  idx, label = bx.match(gt, cand, fg_threshold=0.7, bg_threshold=0.3)
  np.testing.assert_array_equal(label, [-1, -1, 0])
  idx, label = bx.match(gt, cand, fg_threshold=0.7, bg_threshold=0.3, allow_low_quality=True)
  np.testing.assert_array_equal(label, [-1, 1, 0])  # gt 1 overlaps nothing: claims nothing
  np.testing.assert_array_equal(idx, [-1, 0, -1])


@pytest.mark.parametrize("num_pos", [40, 3, 0])
def test_sample_exactly_k_with_positive_fraction(num_pos):
  labels = np.full(200, -1, np.int32)
  labels[:num_pos] = 1
  labels[100:180] = 0
  f = jax.jit(lambda k, l: bx.sample(k, l, num_samples=32, positive_fraction=0.25))
  idx, lab = map(np.asarray, f(jax.random.key(0), labels))
  assert idx.shape == lab.shape == (32,)
  assert np.sum(lab == 1) == min(num_pos, 8)
  assert np.sum(lab == 0) == 32 - min(num_pos, 8)
  np.testing.assert_array_equal(labels[idx], lab)
  assert len(set(idx.tolist())) == 32
  again, _ = f(jax.random.key(0), labels)
  np.testing.assert_array_equal(again, idx)
  if num_pos == 40:
    other, _ = f(jax.random.key(1), labels)
    assert set(np.asarray(other).tolist()) != set(idx.tolist())


def test_sample_pads_with_minus_one_when_too_few_boxes():
  labels = np.array([1, 0, -1, 0, -1], np.int32)
  idx, lab = bx.sample(jax.random.key(0), labels, num_samples=8, positive_fraction=0.5)
  np.testing.assert_array_equal(lab, [1, 0, 0, -1, -1, -1, -1, -1])
  assert idx[0] == 0 and set(np.asarray(idx[1:3]).tolist()) == {1, 3}
  np.testing.assert_array_equal(idx[3:], -1)


def test_roi_levels_fpn_equation_1():
  sides = np.array([10, 55.9, 56, 111.9, 112, 150, 224, 447, 448, 1000], np.float32)
  b = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
  np.testing.assert_array_equal(bx.roi_levels(b), [2, 2, 2, 2, 3, 3, 4, 4, 5, 5])
  # √(wh), not the side: 112 × 448 has the area of 224².
  assert int(bx.roi_levels(np.array([[0, 0, 112, 448]], np.float32))[0]) == 4
