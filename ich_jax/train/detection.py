"""The detection task: seed 001's Mask R-CNN trained and run in the shared loop.

Seed 001 ("Convolutional Neural Network", "Implementation"): region proposals
from anchors at 4 scales × 3 ratios on P2–P5; 128 ROIs per image sampled at
1:3 positive:negative; approximate joint training (Faster R-CNN's: the
proposals are constants for the second stage, `stop_gradient`); at inference
the top 256 proposals after NMS go to the box classifier (softmax over
background + classes) and regressor, and a mask head on the kept detections
gives instance masks. A study is positive if any detection on any slice is;
its score is the maximum detection score (Statistical Analysis).

Classes (`classes`): groups of subtypes, each group one detector class. The
paper stratifies IPH, EDH/SDH together, and SAH (`PAPER_CLASSES` adds IVH,
which our data has and the paper's classes do not: left out, its blood would
be taught as background); `FIVE_SUBTYPES` is one class per subtype.

Fixed shapes throughout, so one compiled step serves every batch: ground
truth padded to `config.data.instances` per slice with a count
(`ich_jax.data.instances`), sampled ROIs padded with label −1, NMS outputs
padded with −1 (`ich_jax.models.boxes`).

Predictions (what evaluation, the bundle and predict read):
  probabilities [B, 6] in LABELS order: "any" is the slice's highest
    detection score over all classes; a subtype's is its class's highest
    score (subtypes of one group share it). The maximum over all proposals
    equals the maximum over the kept detections (NMS never removes a class's
    top box), so thresholds do not cap the scores the AUC ranks.
  det_boxes [B, D, 4] (y1, x1, y2, x2, input pixels), det_scores [B, D]
    (0 past the kept ones), det_classes [B, D] (class index, −1 padding).
  pred_mask [B, H, W] uint8: pixels inside a kept detection of score ≥
    `mask_score_threshold` whose pasted mask probability is ≥ `mask_threshold`,
    labelled with the smallest LABELS index of the detection's class group
    (the subtype itself for one-subtype classes; read EDH/SDH's as the group).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ich_jax import LABELS, SUBTYPES
from ich_jax.eval import detection as detection_eval
from ich_jax.models import boxes, maskrcnn
from ich_jax.train import tasks

# Seed 001 (Introduction, Table 2): IPH, EDH/SDH, SAH; IVH as a fourth class (see the module doc).
PAPER_CLASSES = (("intraparenchymal",), ("epidural", "subdural"), ("subarachnoid",), ("intraventricular",))
FIVE_SUBTYPES = tuple((s,) for s in SUBTYPES)
# Faster R-CNN's box-coder weights: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head (torchvision).
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Smooth-L1 beta of torchvision's RPN and box losses.
SMOOTH_L1_BETA = 1.0 / 9.0


def smooth_l1(x: jax.Array, beta: float = SMOOTH_L1_BETA) -> jax.Array:
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def proposals(anchors: jax.Array, logits: jax.Array, deltas: jax.Array, image_shape: tuple[int, int], *,
              pre_nms: int, post_nms: int, nms_threshold: float, min_size: float = 1e-3):
  """One image's RPN proposals: (boxes [post_nms, 4], valid [post_nms]).

  The `pre_nms` highest objectness logits over all levels are decoded,
  clipped to the image, boxes under `min_size` dropped, then NMS keeps up to
  `post_nms` (Faster R-CNN §3.3; torchvision ranks per level before one NMS
  per level — here one ranking and one NMS over all levels, Detectron's
  post-NMS form).
  """
  k = min(pre_nms, logits.shape[0])
  top, idx = jax.lax.top_k(logits, k)
  bx = clip(boxes.decode(deltas[idx], anchors[idx], RPN_WEIGHTS), image_shape)
  ok = ((bx[:, 2] - bx[:, 0]) >= min_size) & ((bx[:, 3] - bx[:, 1]) >= min_size)
  score = jnp.where(ok, top, -jnp.inf)
  keep, _ = boxes.nms(bx, score, iou_threshold=nms_threshold, max_output=post_nms)
  safe = jnp.maximum(keep, 0)
  return bx[safe], (keep >= 0) & jnp.isfinite(score[safe])


def clip(bx: jax.Array, image_shape: tuple[int, int]) -> jax.Array:
  h, w = image_shape
  return jnp.stack([jnp.clip(bx[..., 0], 0, h), jnp.clip(bx[..., 1], 0, w), jnp.clip(bx[..., 2], 0, h),
                    jnp.clip(bx[..., 3], 0, w)], axis=-1)


def paste_masks(masks: jax.Array, bx: jax.Array, image_shape: tuple[int, int]) -> jax.Array:
  """Mask probabilities [D, m, m] on their boxes [D, 4] → [D, H, W], bilinear, 0 outside each box.

  A pixel centre (i + 0.5) inside a box maps to mask coordinate
  (i + 0.5 − y1)/(y2 − y1)·m − 0.5 (the mask's cells tile the box), clamped
  to the mask's edge cells; separable weights make it two small contractions.
  """
  m = masks.shape[-1]

  def weights(lo, hi, size):
    centre = jnp.arange(size, dtype=jnp.float32) + 0.5
    u = (centre[None, :] - lo[:, None]) / jnp.maximum(hi - lo, 1e-6)[:, None] * m - 0.5
    inside = (centre[None, :] >= lo[:, None]) & (centre[None, :] <= hi[:, None])
    u = jnp.clip(u, 0, m - 1)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(u[..., None] - jnp.arange(m, dtype=jnp.float32)))
    return w * inside[..., None]  # [D, size, m]

  wy = weights(bx[:, 0], bx[:, 2], image_shape[0])
  wx = weights(bx[:, 1], bx[:, 3], image_shape[1])
  return jnp.einsum("dhk,dkl,dwl->dhw", wy, masks, wx)


@tasks.register("detection")
class Detection(tasks.Task):
  """Channel image [B, H, W, C] → detections, instance masks and slice probabilities (module doc).

  Every number's source is in configs/hybrid_maskrcnn.py; the defaults here
  are Faster/Mask R-CNN's (torchvision's) where seed 001 gives none.
  """

  input_keys = ("image",)
  target_keys = ("instance_map", "gt_boxes", "gt_subtypes", "gt_count")

  def __init__(self, classes=PAPER_CLASSES, anchor_scales=(16.0, 32.0, 64.0, 128.0),
               anchor_ratios=(1.0, 0.5, 2.0), rpn_fg_iou: float = 0.7, rpn_bg_iou: float = 0.3,
               rpn_batch: int = 256, rpn_positive_fraction: float = 0.5, rpn_nms: float = 0.7,
               rpn_pre_nms_train: int = 2000, rpn_post_nms_train: int = 2000, rpn_pre_nms_test: int = 1000,
               rpn_post_nms_test: int = 256, roi_batch: int = 128, roi_positive_fraction: float = 0.25,
               roi_fg_iou: float = 0.5, box_pre_nms: int = 1000, box_nms: float = 0.5, box_score_threshold: float = 0.05,
               detections: int = 16, mask_threshold: float = 0.5, mask_score_threshold: float = 0.5,
               mask_loss_weight: float = 1.0):
    self.classes = tuple(detection_eval.check_classes(classes))
    self.names = tuple(detection_eval.class_name(g) for g in self.classes)
    k = len(self.classes)
    # LABELS index → class (−1: "any", or a subtype in no class); class → the LABELS index pred_mask writes.
    self.class_of = np.full(len(LABELS), -1, np.int32)
    for c, group in enumerate(self.classes):
      for s in group:
        self.class_of[LABELS.index(s)] = c
    self.class_label = np.array([min(LABELS.index(s) for s in g) for g in self.classes], np.uint8)
    self.num_classes = k
    self.anchor_scales = tuple(float(s) for s in anchor_scales)
    self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
    if len(self.anchor_scales) != len(maskrcnn.LEVELS):
      raise ValueError(f"config task.anchor_scales={anchor_scales}: one scale per pyramid level P2–P5")
    self.rpn_fg_iou, self.rpn_bg_iou = float(rpn_fg_iou), float(rpn_bg_iou)
    self.rpn_batch, self.rpn_positive_fraction, self.rpn_nms = int(rpn_batch), float(rpn_positive_fraction), float(rpn_nms)
    self.rpn_pre_nms_train, self.rpn_post_nms_train = int(rpn_pre_nms_train), int(rpn_post_nms_train)
    self.rpn_pre_nms_test, self.rpn_post_nms_test = int(rpn_pre_nms_test), int(rpn_post_nms_test)
    self.roi_batch, self.roi_positive_fraction = int(roi_batch), float(roi_positive_fraction)
    self.roi_fg_iou = float(roi_fg_iou)
    self.box_pre_nms, self.box_nms, self.box_score_threshold = int(box_pre_nms), float(box_nms), float(box_score_threshold)
    self.detections = int(detections)
    self.mask_threshold, self.mask_score_threshold = float(mask_threshold), float(mask_score_threshold)
    self.mask_loss_weight = float(mask_loss_weight)
    for name in ("rpn_batch", "roi_batch", "detections", "rpn_post_nms_train", "rpn_post_nms_test"):
      if getattr(self, name) < 1:
        raise ValueError(f"config task.{name}={getattr(self, name)}: need >= 1")

  # --- shared pieces -------------------------------------------------------------------------------

  def _check_model(self, model, image):
    if getattr(model, "num_classes", None) != self.num_classes:
      raise ValueError(f"detection task: {self.num_classes} classes {self.names} but the model has "
                       f"{getattr(model, 'num_classes', None)}; set config.model.num_classes = {self.num_classes}")
    if getattr(model, "num_ratios", len(self.anchor_ratios)) != len(self.anchor_ratios):
      raise ValueError(f"detection task: {len(self.anchor_ratios)} anchor ratios but the model's RPN predicts "
                       f"{model.num_ratios} per location; set config.model.options.num_ratios")
    return jnp.asarray(maskrcnn.anchors_for(image.shape[1:3], self.anchor_scales, self.anchor_ratios))

  def _gt(self, batch):
    """Ground truth as the detector's classes: boxes [B, G, 4], class [B, G], valid [B, G]."""
    g = batch["gt_boxes"].shape[1]
    cls = jnp.asarray(self.class_of)[batch["gt_subtypes"]]
    valid = (jnp.arange(g)[None, :] < batch["gt_count"][:, None]) & (cls >= 0)
    return batch["gt_boxes"].astype(jnp.float32), cls, valid

  # --- training --------------------------------------------------------------------------------------

  def _rpn_loss(self, keys, anchors, logits, deltas, gt_boxes, gt_valid):
    def one(key, logit, delta, gtb, ok):
      gt_idx, label = boxes.match(gtb, anchors, fg_threshold=self.rpn_fg_iou, bg_threshold=self.rpn_bg_iou,
                                  valid=ok, allow_low_quality=True)
      idx, lab = boxes.sample(key, label, num_samples=self.rpn_batch, positive_fraction=self.rpn_positive_fraction)
      safe = jnp.maximum(idx, 0)
      pos = lab == 1
      anchor = anchors[safe]
      matched = jnp.where(pos[:, None], gtb[jnp.maximum(gt_idx[safe], 0)], anchor)
      target = boxes.encode(matched, anchor, RPN_WEIGHTS)
      sampled = (lab >= 0).astype(jnp.float32)
      obj = optax.sigmoid_binary_cross_entropy(logit[safe], pos.astype(jnp.float32))
      n = jnp.maximum(sampled.sum(), 1.0)
      box = (smooth_l1(delta[safe] - target).sum(-1) * pos).sum() / n
      return (obj * sampled).sum() / n, box, pos.sum()

    obj, box, npos = jax.vmap(one)(keys, logits, deltas, gt_boxes, gt_valid)
    return obj.mean(), box.mean(), npos.mean()

  def _sample_rois(self, keys, props, props_ok, gt_boxes, gt_cls, gt_valid):
    """Per image: 128 ROIs from the proposals plus the ground truth (torchvision's add_gt_proposals)."""

    def one(key, prop, ok, gtb, cls, gok):
      cand = jnp.concatenate([prop, gtb])
      cand_ok = jnp.concatenate([ok, gok])
      gt_idx, label = boxes.match(gtb, cand, fg_threshold=self.roi_fg_iou, bg_threshold=self.roi_fg_iou, valid=gok)
      label = jnp.where(cand_ok, label, -1)
      idx, lab = boxes.sample(key, label, num_samples=self.roi_batch, positive_fraction=self.roi_positive_fraction)
      safe = jnp.maximum(idx, 0)
      rois = cand[safe]
      g = jnp.maximum(gt_idx[safe], 0)
      pos = lab == 1
      target_cls = jnp.where(pos, cls[g] + 1, 0)
      matched = jnp.where(pos[:, None], gtb[g], rois)
      return rois, lab, target_cls, boxes.encode(matched, rois, ROI_WEIGHTS), g

    return jax.vmap(one)(keys, props, props_ok, gt_boxes, gt_cls, gt_valid)

  @staticmethod
  def _mask_targets(instance_map, rois, gt_index, size: int, num: int):
    """Mask targets [B, R, size, size]: each ROI's matched instance mask cropped and resized (ROIAlign, ≥ 0.5).

    Detectron2's form: ROIAlign (aligned) of the binary instance mask at the
    proposal's box, thresholded at 0.5.
    """
    def one(imap, roi, gi):
      onehot = (imap[..., None] == jnp.arange(1, num + 1, dtype=imap.dtype)).astype(jnp.float32)
      crops = boxes.roi_align(onehot, roi, (size, size), sampling_ratio=2)  # [R, s, s, G]
      return jnp.take_along_axis(crops, gi[:, None, None, None], axis=-1)[..., 0] >= 0.5

    return jax.vmap(one)(instance_map, rois, gt_index)

  def loss(self, model, batch):
    image = batch["image"]
    anchors = self._check_model(model, image)
    shape = image.shape[1:3]
    b = image.shape[0]
    gt_boxes, gt_cls, gt_valid = self._gt(batch)
    key_rpn, key_roi = jax.random.split(model.sample_rngs.sample())
    pyramid = model.pyramid(image)
    logits, deltas = model.rpn(pyramid)
    logits, deltas = logits.astype(jnp.float32), deltas.astype(jnp.float32)
    rpn_obj, rpn_box, rpn_pos = self._rpn_loss(jax.random.split(key_rpn, b), anchors, logits, deltas, gt_boxes,
                                               gt_valid)
    # Approximate joint training (Faster R-CNN §3.2): proposals are constants for the second stage.
    props, props_ok = jax.vmap(lambda lg, dl: proposals(
        anchors, lg, dl, shape, pre_nms=self.rpn_pre_nms_train, post_nms=self.rpn_post_nms_train,
        nms_threshold=self.rpn_nms))(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas))
    rois, lab, target_cls, target_deltas, gt_index = self._sample_rois(jax.random.split(key_roi, b), props, props_ok,
                                                                       gt_boxes, gt_cls, gt_valid)
    rois = jax.lax.stop_gradient(rois)
    cls_logits, box_deltas = model.box_head(pyramid, rois)
    cls_logits, box_deltas = cls_logits.astype(jnp.float32), box_deltas.astype(jnp.float32)
    sampled = (lab >= 0).astype(jnp.float32)
    pos = lab == 1
    n = jnp.maximum(sampled.sum(), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(cls_logits, target_cls)
    cls_loss = (ce * sampled).sum() / n
    chosen = jnp.take_along_axis(box_deltas, jnp.maximum(target_cls - 1, 0)[..., None, None], axis=2)[:, :, 0]
    box_loss = (smooth_l1(chosen - target_deltas).sum(-1) * pos).sum() / n
    # Mask loss (Mask R-CNN §3) on the positive ROIs: the sampler puts them first, at most
    # floor(roi_batch · positive_fraction) of them.
    m = max(int(self.roi_batch * self.roi_positive_fraction), 1)
    mask_logits = model.mask_head(pyramid, rois[:, :m]).astype(jnp.float32)  # [B, m, s, s, K]
    mask_logits = jnp.take_along_axis(mask_logits, jnp.maximum(target_cls[:, :m] - 1, 0)[:, :, None, None, None],
                                      axis=-1)[..., 0]
    target = self._mask_targets(batch["instance_map"], rois[:, :m], gt_index[:, :m], mask_logits.shape[2],
                                 gt_boxes.shape[1])
    per_roi = optax.sigmoid_binary_cross_entropy(mask_logits, target.astype(jnp.float32)).mean(axis=(2, 3))
    mpos = pos[:, :m].astype(jnp.float32)
    mask_loss = (per_roi * mpos).sum() / jnp.maximum(mpos.sum(), 1.0)
    loss = rpn_obj + rpn_box + cls_loss + box_loss + self.mask_loss_weight * mask_loss
    accuracy = ((cls_logits.argmax(-1) == target_cls) * sampled).sum() / n
    return loss, {"loss": loss, "rpn_objectness": rpn_obj, "rpn_box": rpn_box, "roi_class": cls_loss,
                  "roi_box": box_loss, "mask_loss": mask_loss, "roi_accuracy": accuracy,
                  "rpn_positives": rpn_pos, "roi_positives": pos.sum(axis=1).mean().astype(jnp.float32)}

  # --- inference -------------------------------------------------------------------------------------

  def _detect_one(self, prop, ok, prob, deltas, shape):
    """One image's detections from its proposals' class probabilities [P, K+1] and deltas [P, K, 4]."""
    k = self.num_classes
    bx = clip(boxes.decode(deltas, prop[:, None, :], ROI_WEIGHTS), shape)  # [P, K, 4]
    score = prob[:, 1:] * ok[:, None]
    cls = jnp.broadcast_to(jnp.arange(k), score.shape).reshape(-1)
    bx, score = bx.reshape(-1, 4), score.reshape(-1)
    keep_score = jnp.where((score >= self.box_score_threshold) & ((bx[:, 2] - bx[:, 0]) > 0)
                           & ((bx[:, 3] - bx[:, 1]) > 0), score, -jnp.inf)
    top, idx = jax.lax.top_k(keep_score, min(self.box_pre_nms, keep_score.shape[0]))
    # Class-aware NMS in one call: each class's boxes shifted apart so classes never overlap.
    offset = (cls[idx] * (max(shape) + 1)).astype(jnp.float32)[:, None]
    keep, _ = boxes.nms(bx[idx] + offset, top, iou_threshold=self.box_nms, max_output=self.detections)
    safe = jnp.maximum(keep, 0)
    real = (keep >= 0) & jnp.isfinite(top[safe])
    return (jnp.where(real[:, None], bx[idx][safe], 0.0), jnp.where(real, top[safe], 0.0),
            jnp.where(real, cls[idx][safe], -1).astype(jnp.int32))

  # Inference in its stages (benchmarks/detection.py times each): backbone (model.pyramid), proposals,
  # box head with its NMS, mask head with the pasting.

  def inference_proposals(self, model, pyramid, shape) -> tuple[jax.Array, jax.Array]:
    """The RPN's top `rpn_post_nms_test` proposals after NMS: boxes [B, P, 4], valid [B, P]."""
    anchors = jnp.asarray(maskrcnn.anchors_for(shape, self.anchor_scales, self.anchor_ratios))
    logits, deltas = model.rpn(pyramid)
    return jax.vmap(lambda lg, dl: proposals(
        anchors, lg, dl, shape, pre_nms=self.rpn_pre_nms_test, post_nms=self.rpn_post_nms_test,
        nms_threshold=self.rpn_nms))(logits.astype(jnp.float32), deltas.astype(jnp.float32))

  def boxes_of(self, model, pyramid, props, ok, shape) -> dict[str, jax.Array]:
    """Box head on the proposals: class_max [B, K] and the kept detections (class-aware NMS)."""
    cls_logits, box_deltas = model.box_head(pyramid, props)
    prob = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)
    class_max = (prob[..., 1:] * ok[..., None]).max(axis=1)  # [B, K]
    det_boxes, det_scores, det_classes = jax.vmap(lambda p, o, pr, d: self._detect_one(p, o, pr, d, shape))(
        props, ok, prob, box_deltas.astype(jnp.float32))
    return {"class_max": class_max, "det_boxes": det_boxes, "det_scores": det_scores, "det_classes": det_classes}

  def masks_of(self, model, pyramid, det_boxes, det_classes, shape) -> jax.Array:
    """Mask head on the detections, pasted on the image: probabilities [B, D, H, W]."""
    mask_logits = model.mask_head(pyramid, det_boxes).astype(jnp.float32)  # [B, D, s, s, K]
    mask_prob = jax.nn.sigmoid(jnp.take_along_axis(
        mask_logits, jnp.maximum(det_classes, 0)[:, :, None, None, None], axis=-1)[..., 0])
    return jax.vmap(lambda mk, bx: paste_masks(mk, bx, shape))(mask_prob, det_boxes)

  def detect(self, model, image) -> dict[str, jax.Array]:
    self._check_model(model, image)
    shape = image.shape[1:3]
    pyramid = model.pyramid(image)
    props, ok = self.inference_proposals(model, pyramid, shape)
    out = self.boxes_of(model, pyramid, props, ok, shape)
    out["pasted"] = self.masks_of(model, pyramid, out["det_boxes"], out["det_classes"], shape)
    return out

  def label_map(self, pasted, det_scores, det_classes) -> jax.Array:
    """uint8 [B, H, W]: the LABELS index of the best-scoring covering detection's class (module doc)."""
    covers = (pasted >= self.mask_threshold) & (det_scores >= self.mask_score_threshold)[:, :, None, None]
    ranked = jnp.where(covers, det_scores[:, :, None, None], -1.0)
    best = ranked.argmax(axis=1)  # [B, H, W]
    cls = jnp.take_along_axis(det_classes, best.reshape(best.shape[0], -1), axis=1).reshape(best.shape)
    label = jnp.asarray(self.class_label)[jnp.maximum(cls, 0)]
    return jnp.where(covers.any(axis=1), label, jnp.uint8(0))

  def slice_probabilities(self, class_max: jax.Array) -> jax.Array:
    """[B, K] class scores → [B, 6] in LABELS order (module doc); a subtype in no class scores 0."""
    cols = [class_max.max(axis=1)]
    for s in range(1, len(LABELS)):
      c = int(self.class_of[s])
      cols.append(class_max[:, c] if c >= 0 else jnp.zeros_like(cols[0]))
    return jnp.stack(cols, axis=1)

  def predict(self, model, batch) -> dict[str, Any]:
    out = self.detect(model, batch["image"])
    return {"probabilities": self.slice_probabilities(out["class_max"]),
            "pred_mask": self.label_map(out["pasted"], out["det_scores"], out["det_classes"]),
            "det_boxes": out["det_boxes"], "det_scores": out["det_scores"], "det_classes": out["det_classes"]}
