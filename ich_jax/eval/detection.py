"""Detection metrics of a box detector (seed 001's hybrid 3D/2D Mask R-CNN): Table 2, FROC, box AP, class volumes.

Seed 001 (Chang et al. 2018, "Statistical Analysis") scores hemorrhage per study: a study is positive when any
region proposal on any slice holds hemorrhage, and its score is the highest one (here: the maximum over its
slices of the class's probabilities). Table 2 repeats the statistics on a balanced set (as many negative as
positive studies) by hemorrhage type and size. Its volume end point compares predicted with manual volumes
(Pearson r, Dice), and ABC/2 with manual intraparenchymal volumes.

The detector's classes are groups of subtypes (seed 001: IPH, EDH/SDH, SAH); a group's predicted label map
holds the group's smallest LABELS index, so predicted values are always read as groups, never as subtypes.
Lesion-level scores (FROC, box AP) are not in seed 001; they follow the usual conventions (LUNA16's FROC and
CPM, VOC's all-point AP) so that a detector can be judged on its boxes as well as per study.

Inputs: the per-slice predictions an evaluation gathers (see `detection_metrics`). Pure numpy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ich_jax import LABELS, SHORT, SIZE_BINS, SUBTYPES, size_bin
from ich_jax.data import instances
from ich_jax.eval import metrics as M
from ich_jax.eval import volumes
from ich_jax.eval.classification import binary_labels

ALL_ICH = "All ICH"
# LUNA16's FROC operating points (false positives per scan); their mean sensitivity is the CPM.
FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)
# from_mask's ceiling (uint8 instance map): every component of a slice is a reference lesion.
MAX_INSTANCES = 255
_STATS = ("accuracy", "auc", "sensitivity", "specificity", "ppv", "npv")
_IPH = LABELS.index("intraparenchymal")
_FULL_3D = np.ones((3, 3, 3), bool)
_NAN = float("nan")

Classes = Sequence[Sequence[str]]
# Seed 001's Table 2 strata: IPH, EDH/SDH together, SAH ("Statistical Analysis"); IVH, which its data lacks
# and ours has, as an extra row.
TABLE2_CLASSES = (("intraparenchymal",), ("epidural", "subdural"), ("subarachnoid",), ("intraventricular",))


# --- Classes and inputs ------------------------------------------------------------


def class_name(group: Sequence[str]) -> str:
  """("epidural", "subdural") → "EDH/SDH", seed 001's names."""
  return "/".join(SHORT[s] for s in group)


def check_classes(classes: Classes) -> list[tuple[str, ...]]:
  """Class groups as tuples of subtype names; each subtype in one group at most, none empty."""
  seen: set[str] = set()
  out = []
  for group in classes:
    group = (group,) if isinstance(group, str) else tuple(group)
    bad = [s for s in group if s not in SUBTYPES or s in seen]
    if not group or bad:
      raise ValueError(f"classes={classes!r}: group {group!r} must be non-empty, with subtypes from {SUBTYPES} "
                       f"each in one group only; wrong: {bad}")
    seen.update(group)
    out.append(group)
  return out


def class_lut(groups: list[tuple[str, ...]]) -> np.ndarray:
  """LABELS index → class index (-1: no blood, or a subtype in no class); reads masks and predicted maps alike."""
  lut = np.full(len(LABELS), -1, np.int8)
  for c, group in enumerate(groups):
    lut[[LABELS.index(s) for s in group]] = c
  return lut


def _label_map(preds: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  m = np.asarray(preds[key])
  if m.ndim != 3 or (m.size and (m.min() < 0 or m.max() >= len(LABELS))):
    raise ValueError(f"predictions[{key!r}] must be a label map [N, H, W] of 0–{len(LABELS) - 1}; got shape "
                     f"{m.shape}" + (f", values {m.min()}–{m.max()}" if m.size else ""))
  return m


def _detections(preds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(boxes [N, D, 4], scores [N, D], classes [N, D]) with padding (class -1) given score -inf."""
  missing = [k for k in ("det_boxes", "det_scores", "det_classes") if k not in preds]
  if missing:
    raise ValueError(f"the predictions have no detections: missing {missing} (a detector's evaluation writes them)")
  boxes = np.asarray(preds["det_boxes"], np.float64)
  scores = np.asarray(preds["det_scores"], np.float64)
  cls = np.asarray(preds["det_classes"])
  if boxes.shape != scores.shape + (4,) or cls.shape != scores.shape:
    raise ValueError(f"det_boxes {boxes.shape}, det_scores {scores.shape} and det_classes {cls.shape} must be "
                     "[N, D, 4], [N, D] and [N, D]")
  return boxes, np.where(cls >= 0, scores, -np.inf), cls


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU matrix [n, m] of boxes (y1, x1, y2, x2) on pixel edges, area (y2 - y1)(x2 - x1); 0 where both are empty."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.clip(hi - lo, 0, None).prod(-1)
  area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --- Seed 001 Table 2 -------------------------------------------------------------------


def balanced_studies(study_positive: np.ndarray, seed: int) -> np.ndarray:
  """Seed 001's balanced set: every study of the smaller group and as many drawn from the larger one.

  The draw is without replacement from `np.random.default_rng(seed)`, so a seed names one set. With no
  study in one group the set is empty: nothing can be balanced against nothing.
  """
  pos = np.asarray(study_positive, bool)
  small, large = (pos, ~pos) if pos.sum() <= (~pos).sum() else (~pos, pos)
  keep = small.copy()
  drawn = np.random.default_rng(seed).choice(np.flatnonzero(large), size=int(small.sum()), replace=False)
  keep[drawn] = True
  return keep


def balanced_pairs(pos: np.ndarray, neg: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One row of seed 001's balanced Table 2: its positives and as many negatives (or, with fewer negatives than
  positives, every negative and as many positives), taken in the fixed random `order` of the studies.

  A row's negatives are the first of one permutation, so a smaller row's negatives are a subset of a
  larger row's, and one seed names every row's set."""
  n = int(min(pos.sum(), neg.sum()))
  ranked = np.empty(len(order), np.int64)
  ranked[order] = np.arange(len(order))
  out = []
  for group in (pos, neg):
    keep = np.zeros_like(group)
    members = np.flatnonzero(group)
    keep[members[np.argsort(ranked[members], kind="stable")[:n]]] = True
    out.append(keep)
  return out[0], out[1]


def _study_truth(preds, groups, study_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
  """Per study: positive [S, 1 + C] (All ICH, then each class) and volume mL [S, 1 + C] (None: unknown).

  From the reference mask when there is one: a study is positive for a class when any voxel is of the class's
  subtypes, and its volume is the largest over its series (series of one study are reconstructions of one
  head: a sum would count the blood twice). Without a mask (CQ500), from the labels; All ICH's volume is then
  the study_blood_ml column, where there is one.
  """
  _, study_of_row = np.unique(np.asarray(preds["study_id"]), return_inverse=True)
  if "mask" not in preds:
    y = binary_labels(preds)
    cols = np.stack([y[:, 0]] + [y[:, [LABELS.index(s) for s in g]].any(1) for g in groups], 1)
    pos = M.scan_scores(cols.astype(np.float64), study_of_row)[1] > 0.5
    ml = None
    if "study_blood_ml" in preds:
      ml = np.full(pos.shape, np.nan)
      ml[:, 0] = M.scan_scores(np.asarray(preds["study_blood_ml"], np.float64), study_of_row)[1]
    return pos, ml, "labels"
  mask = _label_map(preds, "mask")
  lut = class_lut(groups)
  ml = np.zeros((len(study_ids), 1 + len(groups)))
  for rows in volumes.series_rows(preds)[1]:
    spacing = volumes.series_spacing(preds, rows)
    # Voxel counts per LABELS value in one pass; count × voxel volume is metrics.volume_ml.
    counts = np.bincount(mask[rows].ravel(), minlength=len(LABELS)).astype(np.float64)
    per_class = np.bincount(lut[1:][lut[1:] >= 0], weights=counts[1:][lut[1:] >= 0], minlength=len(groups))
    series_ml = np.r_[counts[1:].sum(), per_class] * np.prod(spacing) / 1000.0
    s = study_of_row[rows[0]]
    ml[s] = np.maximum(ml[s], series_ml)
  return ml > 0, ml, "mask"


def _row(pos: np.ndarray, neg: np.ndarray, score: np.ndarray, threshold: float) -> dict:
  """One Table 2 row: the row's positives against every hemorrhage-free study.

  A row without positives keeps its specificity (the negatives', the same in every row) and is NaN
  elsewhere, as seed 001 prints NA for the test set's punctate EDH/SDH row.
  """
  keep = pos | neg
  y, p = pos[keep], score[keep]
  st = M.binary_stats(y, p, threshold)
  entry = {"n_positive": int(pos.sum()), "n_negative": int(neg.sum())}
  if not pos.any():
    return {**entry, **{k: _NAN for k in _STATS}, "specificity": st["specificity"]}
  return {**entry, "auc": M.roc_auc(y, p), **{k: st[k] for k in _STATS if k != "auc"}}


def _with_ci(entry: dict, y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict:
  """`entry` with a percentile bootstrap interval of its AUC (seed 000 §2.1.5, stratified); NaN without n_boot."""
  lo = hi = _NAN
  if n_boot:
    _, lo, hi = M.bootstrap_ci(M.roc_auc, y, p, n_boot=n_boot, seed=seed)
  return {**entry, "auc_ci": [lo, hi]}


def table2(preds: Mapping[str, np.ndarray], classes: Classes, *, threshold: float = 0.5, seed: int = 0,
           n_boot: int = 500) -> dict:
  """Seed 001 Table 2: per-study statistics on balanced sets by hemorrhage type and size, and All ICH overall.

  "published": the paper's table, each row on its own balanced set (`_published`). "balanced": one balanced
  set of all studies, each row's positives against all of its hemorrhage-free studies (so a row's PPV and NPV
  follow the row's own prevalence).

  A study's score for a class is the maximum over its slices of the class's subtype probabilities (All ICH:
  the "any" column). Rows: "All ICH", then each class; in each, "all" and one row per size bin of the class's
  reference volume in the study (All ICH: the total). Every row scores its positives against all studies of
  the balanced set without blood. "full" is the All ICH row on every study. Both All ICH rows carry a
  bootstrap interval of the AUC (`n_boot` replications, `seed`).
  """
  groups = check_classes(classes)
  prob = M.check_scores(preds["probabilities"], "probabilities")
  if prob.ndim != 2 or prob.shape[1] != len(LABELS):
    raise ValueError(f"probabilities of shape {prob.shape}; expected [N, {len(LABELS)}] in LABELS order")
  study_ids, study_of_row = np.unique(np.asarray(preds["study_id"]), return_inverse=True)
  cols = np.stack([prob[:, 0]] + [prob[:, [LABELS.index(s) for s in g]].max(1) for g in groups], 1)
  score = M.scan_scores(cols, study_of_row)[1]
  pos, ml, reference = _study_truth(preds, groups, study_ids)
  balanced = balanced_studies(pos[:, 0], seed)
  neg = balanced & ~pos[:, 0]
  rows = {}
  for c, name in enumerate([ALL_ICH] + [class_name(g) for g in groups]):
    in_row = {"all": balanced & pos[:, c]}
    if ml is not None and not np.isnan(ml[:, c]).all():
      bins = size_bin(ml[:, c])
      in_row.update({b: in_row["all"] & (bins == b) for b in SIZE_BINS})
    rows[name] = {row: _row(p, neg, score[:, c], threshold) for row, p in in_row.items()}
  rows[ALL_ICH]["all"] = _with_ci(rows[ALL_ICH]["all"], pos[balanced, 0], score[balanced, 0], n_boot, seed)
  full = _with_ci(_row(pos[:, 0], ~pos[:, 0], score[:, 0], threshold), pos[:, 0], score[:, 0], n_boot, seed)
  return {"reference": reference, "threshold": float(threshold), "seed": int(seed), "n_boot": int(n_boot),
          "n_studies": int(len(study_ids)), "n_positive_studies": int(pos[:, 0].sum()),
          "published": _published(prob, study_of_row, study_ids, preds, threshold, seed),
          "balanced": {"n_studies": int(balanced.sum()), "n_positive": int((balanced & pos[:, 0]).sum()),
                       "n_negative": int(neg.sum()), "rows": rows},
          "full": {ALL_ICH: full}}


def _published(prob, study_of_row, study_ids, preds, threshold: float, seed: int) -> dict:
  """Seed 001 Table 2 as published: every row (type × size) on its own balanced set, "an equal number of
  positive and negative cases", so its PPV and NPV are those of a 50 % prevalence. Rows: All ICH, then
  `TABLE2_CLASSES` whatever the detector's classes; a study's score for a row is its highest slice
  probability of the row's subtypes; negatives are hemorrhage-free studies drawn in one fixed order (`seed`)."""
  groups = [tuple(g) for g in TABLE2_CLASSES]
  cols = np.stack([prob[:, 0]] + [prob[:, [LABELS.index(s) for s in g]].max(1) for g in groups], 1)
  score = M.scan_scores(cols, study_of_row)[1]
  pos, ml, _ = _study_truth(preds, groups, study_ids)
  negatives = ~pos[:, 0]
  order = np.random.default_rng(seed).permutation(len(study_ids))
  rows = {}
  for c, name in enumerate([ALL_ICH] + [class_name(g) for g in groups]):
    in_row = {"all": pos[:, c]}
    if ml is not None and not np.isnan(ml[:, c]).all():
      bins = size_bin(ml[:, c])
      in_row.update({b: pos[:, c] & (bins == b) for b in SIZE_BINS})
    rows[name] = {row: _row(*balanced_pairs(p, negatives, order), score[:, c], threshold)
                  for row, p in in_row.items()}
  return {"rows": rows}


# --- Reference lesions ----------------------------------------------------------------------


def _mask_references(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per slice, (boxes [G, 4], subtypes [G]) of the label map's instances (instances.from_mask)."""
  empty = (np.zeros((0, 4)), np.zeros(0, np.int32))
  out = []
  for m in mask:
    if not m.any():
      out.append(empty)
      continue
    inst = instances.from_mask(m, MAX_INSTANCES)
    g = int(inst["gt_count"])
    out.append((inst["gt_boxes"][:g].astype(np.float64), inst["gt_subtypes"][:g]))
  return out


def _bhx_references(preds: Mapping[str, np.ndarray]) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
  """Per slice, the BHX boxes of acute blood (labels 1–5; 6, chronic, is not a reference), and annotated slices."""
  missing = [k for k in ("boxes", "box_labels", "boxes_annotated") if k not in preds]
  if missing:
    raise ValueError(f"froc(source='bhx') needs CQ500's BHX boxes; the predictions lack {missing}")
  boxes = np.asarray(preds["boxes"], np.float64)
  labels = np.asarray(preds["box_labels"])
  acute = (labels >= 1) & (labels < len(LABELS))
  refs = [(b[a], lab[a]) for b, lab, a in zip(boxes, labels, acute)]
  return refs, np.asarray(preds["boxes_annotated"]).astype(bool)


# --- FROC ----------------------------------------------------------------------------------------


def _lesion_and_fp_scores(refs, boxes, scores, slices, iou_threshold) -> tuple[np.ndarray, np.ndarray]:
  """Per reference lesion, the best score of the detections hitting it (-inf: none); scores of those hitting none."""
  with_refs = np.array([len(refs[i][0]) > 0 for i in slices], bool)
  # Every detection on a slice without lesions is a false positive: no loop there.
  fp = [scores[slices[~with_refs]].ravel()]
  lesion = [np.zeros(0)]
  for i in slices[with_refs]:
    hit = iou(refs[i][0], boxes[i]) >= iou_threshold  # [lesions, detections]; padding scores -inf
    lesion.append(np.where(hit, scores[i][None, :], -np.inf).max(1))
    fp.append(scores[i][~hit.any(0)])
  fp = np.concatenate(fp)
  return np.concatenate(lesion), fp[np.isfinite(fp)]


def _froc_curve(lesion: np.ndarray, fp: np.ndarray, n_scans: int) -> tuple[np.ndarray, np.ndarray]:
  """(FP per scan, sensitivity) at every distinct score as threshold, from +inf (0, 0) down."""
  thresholds = np.unique(np.r_[lesion[np.isfinite(lesion)], fp])[::-1]
  above = lambda x: x.size - np.searchsorted(np.sort(x), thresholds, "left")  # noqa: E731  (count of x >= t)
  sens = np.r_[0.0, above(lesion) / lesion.size] if lesion.size else np.full(thresholds.size + 1, np.nan)
  fps = np.r_[0.0, above(fp) / n_scans] if n_scans else np.full(thresholds.size + 1, np.nan)
  return fps, sens


def _froc(refs, boxes, scores, slices, n_scans, fp_rates, iou_threshold, source) -> dict:
  lesion, fp = _lesion_and_fp_scores(refs, boxes, scores, slices, iou_threshold)
  fps, sens = _froc_curve(lesion, fp, n_scans)
  # Standard FROC reading: the best sensitivity whose threshold keeps FP/scan at or under the rate.
  at = [float(sens[fps <= r].max()) if lesion.size and n_scans else _NAN for r in fp_rates]
  return {"fp_rates": [float(r) for r in fp_rates], "sensitivity": at, "mean_sensitivity": float(np.mean(at)),
          "n_lesions": int(lesion.size), "n_scans": int(n_scans), "iou_threshold": float(iou_threshold),
          "hit_rule": f"IoU >= {iou_threshold:g}", "source": source}


def froc(preds: Mapping[str, np.ndarray], *, fp_rates: Sequence[float] = FP_RATES, iou_threshold: float = 0.3,
         source: str = "mask") -> dict:
  """Class-agnostic FROC: lesion sensitivity at each false-positive rate per scan, and their mean (CPM).

  Reference lesions are the connected components of each subtype on a slice (source "mask") or CQ500's BHX
  boxes of acute blood on box-annotated series ("bhx"; the scans are then the studies with annotated slices,
  and only detections on annotated slices count). A lesion is hit at threshold t when a detection on its
  slice scoring >= t has IoU >= `iou_threshold` with its box; the mask-centroid criterion (a detection whose
  box holds the lesion's centroid) is not used, so mask and box references are scored alike. A detection
  that hits no lesion is a false positive; one that hits an already-hit lesion is neither. Scans = studies.
  """
  boxes, scores, _ = _detections(preds)
  study = np.asarray(preds["study_id"])
  if source == "mask":
    refs = _mask_references(_label_map(preds, "mask"))
    slices = np.arange(len(refs))
  elif source == "bhx":
    refs, annotated = _bhx_references(preds)
    slices = np.flatnonzero(annotated)
  else:
    raise ValueError(f"froc source={source!r}; expected 'mask' or 'bhx'")
  n_scans = np.unique(study[slices]).size
  return _froc(refs, boxes, scores, slices, n_scans, fp_rates, iou_threshold, source)


# --- Box AP ----------------------------------------------------------------------------------------


def _match(ref_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """True positives of one slice's detections: in score order, each takes the unmatched reference it overlaps most."""
  order = np.argsort(-scores, kind="stable")
  overlap = iou(boxes[order], ref_boxes)
  tp = np.zeros(len(order), bool)
  free = np.ones(len(ref_boxes), bool)
  for k in np.flatnonzero((overlap >= iou_threshold).any(1)):
    cand = np.where(free, overlap[k], -1.0)
    j = int(np.argmax(cand))
    if cand[j] >= iou_threshold:
      tp[k], free[j] = True, False
  out = np.empty_like(tp)
  out[order] = tp
  return out


def average_precision(scores: np.ndarray, tp: np.ndarray, n_reference: int) -> float:
  """All-point interpolated AP (VOC 2010+): area under the precision envelope over recall; NaN without references."""
  if not n_reference:
    return _NAN
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  hits = np.asarray(tp, bool)[order]
  ctp = np.cumsum(hits)
  recall = np.r_[0.0, ctp / n_reference]
  precision = np.r_[1.0, ctp / np.arange(1, hits.size + 1)]
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  return float((np.diff(recall) * envelope[1:]).sum())


def _ap(refs, ref_class, boxes, scores, det_class, c: int | None, iou_threshold: float) -> tuple[float, int]:
  """AP of class `c` (None: class-agnostic over every class's references and detections)."""
  real = np.isfinite(scores) & (det_class == c if c is not None else True)
  tp = np.zeros(scores.shape, bool)
  n_ref = 0
  for i, (ref_boxes, _) in enumerate(refs):
    keep = ref_class[i] >= 0 if c is None else ref_class[i] == c
    if keep.any():
      n_ref += int(keep.sum())
      d = np.flatnonzero(real[i])
      tp[i, d] = _match(ref_boxes[keep], boxes[i, d], scores[i, d], iou_threshold)
  # Row-major: slice by slice, each slice's detections in their order (the tie order of equal scores).
  return average_precision(scores[real], tp[real], n_ref), n_ref


def box_ap(preds: Mapping[str, np.ndarray], classes: Classes, *, iou_threshold: float = 0.5) -> dict:
  """Per-slice box AP at IoU `iou_threshold` per class and class-agnostic ("any").

  Detections are pooled over slices in score order and matched greedily (COCO: to the unmatched reference of
  their class on their slice with the highest IoU >= the threshold); a second detection of a matched lesion is
  a false positive. References are the mask's instances (instances.from_mask), of the class whose group holds
  the subtype; subtypes in no class are skipped, for "any" too. NaN where a class has no reference.
  """
  groups = check_classes(classes)
  boxes, scores, det_class = _detections(preds)
  refs = _mask_references(_label_map(preds, "mask"))
  lut = class_lut(groups)
  ref_class = [lut[sub] for _, sub in refs]
  out: dict = {}
  n_ref: dict[str, int] = {}
  for c, name in [(None, "any")] + list(enumerate(class_name(g) for g in groups)):
    out[name], n_ref[name] = _ap(refs, ref_class, boxes, scores, det_class, c, iou_threshold)
  return {**out, "n_reference": n_ref, "iou_threshold": float(iou_threshold)}


# --- Volumes per class ---------------------------------------------------------------------------------


def _largest_component(blood: np.ndarray) -> np.ndarray:
  """The largest 3D connected component (26-connected: slices touch through edges and corners too)."""
  labelled, n = ndimage.label(blood, structure=_FULL_3D)
  sizes = np.bincount(labelled.ravel(), minlength=n + 1)
  return labelled == 1 + int(np.argmax(sizes[1:]))


def _series_table(preds, groups) -> dict[str, np.ndarray]:
  """Per series [S] and class [S, C]: reference and predicted mL, 3D Dice; largest-IPH columns (NaN: no IPH)."""
  mask, pred = _label_map(preds, "mask"), _label_map(preds, "pred_mask")
  if pred.shape != mask.shape:
    raise ValueError(f"pred_mask shape {pred.shape} != mask shape {mask.shape}")
  lut = class_lut(groups)
  ids, rows_of = volumes.series_rows(preds)
  shape = (len(ids), len(groups))
  t = {"reference_ml": np.zeros(shape), "predicted_ml": np.zeros(shape), "dice": np.full(shape, np.nan),
       "iph_component_ml": np.full(len(ids), np.nan), "iph_abc2_ml": np.full(len(ids), np.nan)}
  for s, rows in enumerate(rows_of):
    spacing = volumes.series_spacing(preds, rows)
    ref_c, pred_c = lut[mask[rows]], lut[pred[rows]]
    for c in range(len(groups)):
      r, p = ref_c == c, pred_c == c
      t["reference_ml"][s, c], t["predicted_ml"][s, c] = M.volume_ml(r, spacing), M.volume_ml(p, spacing)
      t["dice"][s, c] = M.dice(p, r)
    iph = mask[rows] == _IPH
    if iph.any():
      largest = _largest_component(iph)
      t["iph_component_ml"][s], t["iph_abc2_ml"][s] = M.volume_ml(largest, spacing), M.abc2_ml(largest, spacing)
  return t


def class_volumes(preds: Mapping[str, np.ndarray], classes: Classes) -> dict:
  """Seed 001's volume end point per class: predicted vs reference volume per series, and ABC/2 on the largest IPH.

  Per class, over the series whose reference holds the class: Pearson r and signed error (predicted −
  reference, mL) of the class's volumes, and the mean 3D Dice of the class's masks. A predicted voxel is of
  the class when its value is any of the class's LABELS indices. "largest_iph": per series with
  intraparenchymal blood, ABC/2 of its largest 3D component against that component's volume, and the IPH
  class's predicted against reference volume (seed 001: ABC/2 r 0.954, the CNN 0.999).
  """
  groups = check_classes(classes)
  t = _series_table(preds, groups)
  out: dict = {"n_series": int(len(t["reference_ml"])), "classes": {}}
  for c, g in enumerate(groups):
    has = t["reference_ml"][:, c] > 0
    out["classes"][class_name(g)] = {
        **volumes.agreement(t["reference_ml"][has, c], t["predicted_ml"][has, c]),
        "dice": float(t["dice"][has, c].mean()) if has.any() else _NAN}
  iph = np.isfinite(t["iph_component_ml"])
  c_iph = [c for c, g in enumerate(groups) if "intraparenchymal" in g]
  out["largest_iph"] = {
      "n": int(iph.sum()), "abc2": volumes.agreement(t["iph_component_ml"][iph], t["iph_abc2_ml"][iph]),
      "predicted": (volumes.agreement(t["reference_ml"][iph, c_iph[0]], t["predicted_ml"][iph, c_iph[0]])
                    if c_iph else None)}
  return out


# --- Everything, and its text ----------------------------------------------------------------------


def detection_metrics(preds: Mapping[str, np.ndarray], classes: Classes, *, threshold: float = 0.5,
                      n_boot: int = 500, seed: int = 0) -> dict:
  """Table 2, FROC, box AP and class volumes of one detector's predictions (a JSON-able dict; NaN allowed).

  Sections that need the reference mask (froc, box_ap, volumes) are None without one, as on CQ500, where
  Table 2 reads the labels and "froc_bhx" scores the BHX boxes; "froc_bhx" is None without annotated boxes.
  """
  groups = check_classes(classes)
  has_mask = "mask" in preds
  annotated = "boxes" in preds and np.asarray(preds.get("boxes_annotated", 0)).any()
  return {"classes": [class_name(g) for g in groups], "class_subtypes": [list(g) for g in groups],
          "threshold": float(threshold),
          "table2": table2(preds, groups, threshold=threshold, seed=seed, n_boot=n_boot),
          "froc": froc(preds) if has_mask else None,
          "froc_bhx": froc(preds, source="bhx") if annotated else None,
          "box_ap": box_ap(preds, groups) if has_mask else None,
          "volumes": class_volumes(preds, groups) if has_mask and "pred_mask" in preds else None}
