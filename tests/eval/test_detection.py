"""Seed 001's Table 2, FROC, box AP and class volumes on hand-built studies whose answers are worked out below."""
import json

import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import detection as D
from ich_jax.eval import metrics as M
from ich_jax.eval.detection_text import format_detection
from ich_jax.jsonable import jsonable

PAPER = (("intraparenchymal",), ("epidural", "subdural"), ("subarachnoid",), ("intraventricular",))
EDH, IPH, IVH, SAH, SDH = (LABELS.index(s) for s in ("epidural", "intraparenchymal", "intraventricular",
                                                      "subarachnoid", "subdural"))
GAP = 5.0  # mm between slices: z positions 0, 5, ...


def _prob(any_=0.05, edh=0.05, iph=0.05, ivh=0.05, sah=0.05, sdh=0.05):
  return [any_, edh, iph, ivh, sah, sdh]


def _assemble(series: list[dict], size: int, n_det: int = 4) -> dict:
  """Predictions of a few series: `id`, `mask` [n, H, W]; optional `study` (default: its own), `prob` [n, 6], `spacing`
  (dy, dx), `pred_mask`, and `dets`: (slice, score, box, class index) — the rest of each slice's D rows padding."""
  rows: dict[str, list] = {k: [] for k in ("study_id", "series_id", "slice_index", "z_position", "pixel_spacing",
                                           "slice_thickness", "mask", "pred_mask", "probabilities")}
  boxes, scores, classes = [], [], []
  for s in series:
    n = len(s["mask"])
    b, sc, cl = np.zeros((n, n_det, 4), np.float32), np.zeros((n, n_det), np.float32), np.full((n, n_det), -1)
    for i, score, box, c in s.get("dets", []):
      j = int((cl[i] >= 0).sum()) if c >= 0 else n_det - 1
      b[i, j], sc[i, j], cl[i, j] = box, score, c
    boxes.append(b)
    scores.append(sc)
    classes.append(cl)
    rows["study_id"] += [s.get("study", s["id"])] * n
    rows["series_id"] += [s["id"] + ".1"] * n
    rows["slice_index"] += list(range(n))
    rows["z_position"] += [GAP * k for k in range(n)]
    rows["pixel_spacing"] += [s.get("spacing", (1.0, 1.0))] * n
    rows["slice_thickness"] += [GAP] * n
    rows["mask"] += list(s["mask"])
    rows["pred_mask"] += list(s.get("pred_mask", s["mask"]))
    rows["probabilities"] += list(s.get("prob", [_prob()] * n))
  out = {k: np.array(v) for k, v in rows.items()}
  out["mask"] = out["mask"].astype(np.uint8).reshape(-1, size, size)
  out["pred_mask"] = out["pred_mask"].astype(np.uint8).reshape(-1, size, size)
  onehot = np.eye(len(LABELS))[out["mask"].reshape(len(out["mask"]), -1)].max(1)
  onehot[:, 0] = out["mask"].reshape(len(out["mask"]), -1).any(1)
  out.update(labels=onehot.astype(np.float32), probabilities=out["probabilities"].astype(np.float32),
             det_boxes=np.concatenate(boxes), det_scores=np.concatenate(scores),
             det_classes=np.concatenate(classes).astype(np.int32))
  return out


def _table2_preds() -> dict:
  """Six studies of two 8×8 slices: three with blood, three without.

  s0: IPH 10 px at 1×1 mm × 5 mm = 0.05 mL (small); s1: SDH 1 px at 0.5×0.5 mm = 0.00125 mL (punctate);
  s2: at 4×4 mm (0.08 mL a voxel) IPH 80 voxels = 6.4 mL (medium), SAH 48 = 3.84 mL (small), total 10.24 (medium).
  """
  m = lambda: np.zeros((2, 8, 8), np.uint8)  # noqa: E731
  s0, s1, s2 = m(), m(), m()
  s0[1, 0:2, 0:5] = IPH
  s1[0, 3, 3] = SDH
  s2[:, 0:5] = IPH
  s2[:, 5:8] = SAH
  return _assemble([
      {"id": "s0", "mask": s0, "prob": [_prob(0.3, iph=0.1), _prob(0.9, iph=0.8)]},
      # EDH/SDH's score is the group's maximum: epidural 0.6, though the bleed is subdural (0.3).
      {"id": "s1", "mask": s1, "spacing": (0.5, 0.5), "prob": [_prob(0.4, edh=0.6, sdh=0.3), _prob()]},
      {"id": "s2", "mask": s2, "spacing": (4.0, 4.0), "prob": [_prob(0.7, iph=0.45, sah=0.55), _prob(0.5, iph=0.3)]},
      {"id": "s3", "mask": m(), "prob": [_prob(0.2, 0.1, 0.1, 0.0, 0.1, 0.05), _prob()]},
      {"id": "s4", "mask": m(), "prob": [_prob(), _prob(0.6, 0.5, 0.5, 0.0, 0.6, 0.2)]},
      {"id": "s5", "mask": m(), "prob": [_prob(0.1, 0.2, 0.2, 0.0, 0.1, 0.1), _prob()]},
  ], size=8)


def test_balanced_set_takes_the_smaller_group_and_as_many_of_the_larger():
  pos = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool)
  a = D.balanced_studies(pos, seed=3)
  assert a.sum() == 6 and (a & pos).sum() == 3 and (a[pos]).all()
  np.testing.assert_array_equal(a, D.balanced_studies(pos, seed=3))
  assert any((D.balanced_studies(pos, seed=s) != a).any() for s in range(1, 6))
  # Positives the larger group: all 2 negatives and 2 of the 5 positives.
  b = D.balanced_studies(np.array([1, 1, 0, 1, 1, 0, 1], bool), seed=0)
  assert b.sum() == 4 and b[[2, 5]].all()
  assert D.balanced_studies(np.ones(4, bool), seed=0).sum() == 0


def _check(e, **want):
  for k, v in want.items():
    assert e[k] == pytest.approx(v, nan_ok=True), k


def test_table2_by_type_and_size_on_six_studies():
  t = D.table2(_table2_preds(), PAPER, threshold=0.5, seed=0, n_boot=20)
  assert t["reference"] == "mask" and t["balanced"]["n_positive"] == t["balanced"]["n_negative"] == 3
  rows = t["balanced"]["rows"]
  assert list(rows) == ["All ICH", "IPH", "EDH/SDH", "SAH", "IVH"]
  assert list(rows["IPH"]) == ["all", "punctate", "small", "medium", "large"]
  # Any: positives 0.9, 0.4, 0.7 against 0.2, 0.6, 0.1: 8 of 9 pairs ordered; 0.4 missed, 0.6 a false positive.
  _check(rows["All ICH"]["all"], n_positive=3, n_negative=3, auc=8 / 9, sensitivity=2 / 3, specificity=2 / 3,
         ppv=2 / 3, npv=2 / 3, accuracy=2 / 3)
  _check(rows["All ICH"]["punctate"], n_positive=1, auc=2 / 3, sensitivity=0, ppv=0, npv=2 / 3, accuracy=0.5)
  _check(rows["All ICH"]["small"], n_positive=1, auc=1, sensitivity=1, ppv=0.5, accuracy=0.75)
  _check(rows["All ICH"]["medium"], n_positive=1, auc=1, sensitivity=1)
  # No large bleed: NA as seed 001 prints, but the negatives' specificity stays.
  _check(rows["All ICH"]["large"], n_positive=0, n_negative=3, auc=np.nan, sensitivity=np.nan, accuracy=np.nan,
         ppv=np.nan, npv=np.nan, specificity=2 / 3)
  # IPH: s0 0.8 (small), s2 0.45 (medium; by its IPH volume 6.4 mL) against 0.1, 0.5, 0.2.
  _check(rows["IPH"]["all"], n_positive=2, auc=5 / 6, sensitivity=0.5, specificity=2 / 3, accuracy=0.6)
  _check(rows["IPH"]["small"], n_positive=1, auc=1, sensitivity=1)
  _check(rows["IPH"]["medium"], n_positive=1, auc=2 / 3, sensitivity=0)
  # EDH/SDH: s1 scores 0.6 (its epidural column) against 0.1, 0.5, 0.2; punctate by its own volume.
  _check(rows["EDH/SDH"]["all"], n_positive=1, auc=1, sensitivity=1)
  _check(rows["EDH/SDH"]["punctate"], n_positive=1, auc=1)
  # SAH: s2's 3.84 mL is small, though the study's total (10.24 mL) is medium.
  _check(rows["SAH"]["small"], n_positive=1, auc=2 / 3, sensitivity=1)
  _check(rows["SAH"]["medium"], n_positive=0)
  _check(rows["IVH"]["all"], n_positive=0, auc=np.nan)
  full = t["full"]["All ICH"]
  _check(full, auc=8 / 9, n_positive=3, n_negative=3)
  for e in (full, rows["All ICH"]["all"]):
    lo, hi = e["auc_ci"]
    assert 0 <= lo <= 8 / 9 <= hi <= 1 and lo < hi


def test_table2_a_study_of_two_series_takes_the_larger_volume_not_the_sum():
  # Two reconstructions of one head, 40 voxels of 4×4×5 mm each: 3.2 mL (small); their sum, 6.4 mL, would be medium.
  blood, none = np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8)
  blood[0, 0:5] = IPH
  p = _assemble([{"id": "a1", "study": "a", "mask": blood, "spacing": (4.0, 4.0)},
                 {"id": "a2", "study": "a", "mask": blood, "spacing": (4.0, 4.0)},
                 {"id": "b", "mask": none}], size=8)
  rows = D.table2(p, PAPER, n_boot=0)["balanced"]["rows"]
  assert rows["IPH"]["small"]["n_positive"] == 1 and rows["IPH"]["medium"]["n_positive"] == 0


def _froc_series() -> list[dict]:
  """Scans A and B, two 16×16 slices each; lesions L1 [0,0,4,4], L2 [8,8,12,12] (IPH, A slice 0), L3 [2,2,6,6]
  (SDH, B slice 0). In score order: L1 0.9, its duplicate 0.85, FP 0.8, FP 0.7, L2 0.6, FP 0.5, FP 0.45, L3 0.4,
  FP 0.2; a padding row (class -1) scored 0.95 must not count."""
  a, b = np.zeros((2, 16, 16), np.uint8), np.zeros((2, 16, 16), np.uint8)
  a[0, 0:4, 0:4] = IPH
  a[0, 8:12, 8:12] = IPH
  b[0, 2:6, 2:6] = SDH
  return [{"id": "A", "mask": a, "dets": [(0, 0.9, (0, 0, 4, 4), 0), (0, 0.85, (0, 0, 4, 4), 0),
                                          (0, 0.6, (8, 8, 12, 12), 0), (0, 0.95, (12, 12, 16, 16), -1),
                                          (1, 0.8, (0, 0, 4, 4), 0), (1, 0.45, (4, 4, 8, 8), 2)]},
          {"id": "B", "mask": b, "dets": [(0, 0.4, (2, 2, 6, 6), 1), (0, 0.7, (10, 10, 14, 14), 1),
                                          (0, 0.2, (12, 0, 16, 4), 0), (1, 0.5, (1, 1, 5, 5), 1)]}]


FROC_WANT = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1]  # at 0.125, 0.25, 0.5, 1, 2, 4, 8 FP per scan


def test_froc_by_hand():
  f = D.froc(_assemble(_froc_series(), size=16))
  np.testing.assert_allclose(f["sensitivity"], FROC_WANT)
  assert f["mean_sensitivity"] == pytest.approx(2 / 3)
  assert (f["n_lesions"], f["n_scans"], f["hit_rule"], f["source"]) == (3, 2, "IoU >= 0.3", "mask")


@pytest.mark.parametrize("y2, hit", [(3.0, True), (2.9, False)])
def test_froc_hit_needs_iou_of_at_least_0_3(y2, hit):
  m = np.zeros((1, 16, 16), np.uint8)
  m[0, 0:10, 0:10] = IPH
  # Inside the lesion's 10×10 box: IoU = 10·y2 / 100 = 0.30 or 0.29.
  f = D.froc(_assemble([{"id": "A", "mask": m, "dets": [(0, 0.9, (0, 0, y2, 10), 0)]}], size=16))
  assert f["sensitivity"] == [float(hit)] * 7


def test_froc_on_bhx_boxes_counts_annotated_scans_only():
  series = _froc_series()
  series.append({"id": "C", "mask": np.zeros((2, 16, 16), np.uint8), "dets": [(0, 0.99, (0, 0, 4, 4), 0)]})
  p = _assemble(series, size=16)
  boxes, labels = np.zeros((6, 3, 4), np.float32), np.zeros((6, 3), np.int32)
  # A slice 0: L1, L2 and a chronic bleed (label 6, never a reference); B slice 0: L3; padding label 0.
  boxes[0, :3], labels[0, :3] = [(0, 0, 4, 4), (8, 8, 12, 12), (12, 0, 16, 4)], [IPH, IPH, 6]
  boxes[2, 0], labels[2, 0] = (2, 2, 6, 6), SDH
  p.update(boxes=boxes, box_labels=labels, boxes_annotated=np.array([1, 1, 1, 1, 0, 0], np.uint8))
  del p["mask"]
  f = D.froc(p, source="bhx")
  np.testing.assert_allclose(f["sensitivity"], FROC_WANT)
  assert (f["n_lesions"], f["n_scans"], f["source"]) == (3, 2, "bhx")
  with pytest.raises(ValueError, match="source='nope'"):
    D.froc(p, source="nope")


def _ap_preds(dets_a, dets_b, extra_ivh=False) -> dict:
  series = _froc_series()
  series[0]["dets"], series[1]["dets"] = dets_a, dets_b
  if extra_ivh:
    series[1]["mask"][1, 10:12, 10:12] = IVH
  return _assemble(series, size=16)


def test_box_ap_perfect_detections_and_subtypes_outside_the_classes():
  p = _ap_preds([(0, 0.9, (0, 0, 4, 4), 0), (0, 0.8, (8, 8, 12, 12), 0)], [(0, 0.7, (2, 2, 6, 6), 1)],
                extra_ivh=True)
  ap = D.box_ap(p, PAPER[:3])  # IVH in no class: its instance is no reference, even for "any"
  assert (ap["any"], ap["IPH"], ap["EDH/SDH"]) == (1.0, 1.0, 1.0) and np.isnan(ap["SAH"])
  assert ap["n_reference"] == {"any": 3, "IPH": 2, "EDH/SDH": 1, "SAH": 0}


def test_box_ap_a_duplicate_is_a_false_positive():
  p = _ap_preds([(0, 0.9, (0, 0, 4, 4), 0), (0, 0.85, (0, 0, 4, 4), 0), (0, 0.8, (8, 8, 12, 12), 0)],
                [(0, 0.7, (2, 2, 6, 6), 1)])
  ap = D.box_ap(p, PAPER)
  # IPH: TP, FP, TP → precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2·1 + 1/2·2/3.
  assert ap["IPH"] == pytest.approx(5 / 6)
  # Any: TP, FP, TP, TP → recall 1/3 at precision 1, then the envelope 3/4 up to recall 1.
  assert ap["any"] == pytest.approx(1 / 3 + 2 / 3 * 3 / 4)


def test_box_ap_a_wrong_class_hit_counts_for_no_class():
  p = _ap_preds([(0, 0.9, (0, 0, 4, 4), 0), (0, 0.8, (8, 8, 12, 12), 0)], [(0, 0.95, (2, 2, 6, 6), 0)])
  ap = D.box_ap(p, PAPER)
  # IPH: FP 0.95, TP, TP → precision 0, 1/2, 2/3 at recall 0, 1/2, 1: AP = 2/3. EDH/SDH: nothing found.
  assert ap["IPH"] == pytest.approx(2 / 3) and ap["EDH/SDH"] == 0.0 and ap["any"] == 1.0


def _volume_series():
  """8×8 slices at 1×1×5 mm (0.005 mL a voxel). The detector writes epidural (1) for the EDH/SDH group."""
  z = lambda: np.zeros((2, 8, 8), np.uint8)  # noqa: E731
  ref, pred = {k: z() for k in "ABCDE"}, {k: z() for k in "ABCDE"}
  ref["A"][0, 0:4, 0:5] = SDH                         # 20 px; predicted 24 px covering it
  pred["A"][0, 0:4, 0:6] = EDH
  ref["B"][:, 0:4, 0:5] = SDH                         # 40 px; predicted 20 of them
  pred["B"][0, 0:4, 0:5] = EDH
  ref["D"][0, 0:2, 0:5] = SDH                         # 10 px, missed
  # C: IPH of 12 px on slice 0 and 4 on slice 1 that touch only through a corner (one 26-connected component
  # of 16 px), and a separate 1 px; predicted exactly.
  ref["C"][0, 2:5, 2:6] = IPH
  ref["C"][1, 5:7, 6:8] = IPH
  ref["C"][1, 0, 0] = IPH
  pred["C"] = ref["C"].copy()
  ref["E"][0, 0:2, 0:4] = IPH                         # 8 px; predicted 6
  pred["E"][0, 0:2, 0:3] = IPH
  return [{"id": k, "mask": ref[k], "pred_mask": pred[k]} for k in "ABCDE"], ref


def test_class_volumes_read_predicted_groups_and_agree_by_hand():
  series, ref = _volume_series()
  v = D.class_volumes(_assemble(series, size=8), PAPER)
  sdh = v["classes"]["EDH/SDH"]
  ref_ml, pred_ml = np.array([0.1, 0.2, 0.05]), np.array([0.12, 0.1, 0.0])
  assert sdh["n"] == 3
  assert sdh["pearson_r"] == pytest.approx(np.corrcoef(ref_ml, pred_ml)[0, 1])
  assert sdh["mean_error_ml"] == pytest.approx(-0.13 / 3)
  assert sdh["dice"] == pytest.approx((40 / 44 + 40 / 60 + 0) / 3)
  iph = v["classes"]["IPH"]
  assert (iph["n"], iph["pearson_r"]) == (2, pytest.approx(1.0))
  assert iph["mean_error_ml"] == pytest.approx(-0.005) and iph["dice"] == pytest.approx((1 + 12 / 14) / 2)
  assert v["classes"]["SAH"]["n"] == 0 and np.isnan(v["classes"]["SAH"]["dice"])
  # Largest IPH: C's 16-voxel component (2 slices; face connectivity would give 12 voxels on 1), E's 8.
  largest_c = ref["C"].copy()
  largest_c[1, 0, 0] = 0
  spacing = (GAP, 1.0, 1.0)
  comp = np.array([0.08, 0.04])
  abc2 = np.array([M.abc2_ml(largest_c, spacing), M.abc2_ml(ref["E"], spacing)])
  big = v["largest_iph"]
  assert big["n"] == 2 and big["abc2"]["mean_error_ml"] == pytest.approx((abc2 - comp).mean())
  assert big["predicted"]["mean_error_ml"] == pytest.approx(-0.005)


def test_detection_metrics_is_json_and_formats_its_numbers():
  p = _table2_preds()
  p["det_boxes"][1, 0], p["det_scores"][1, 0], p["det_classes"][1, 0] = (0, 0, 2, 5), 0.9, 0
  m = D.detection_metrics(p, PAPER, n_boot=20)
  assert list(m) == ["classes", "class_subtypes", "threshold", "table2", "froc", "froc_bhx", "box_ap", "volumes"]
  assert m["froc_bhx"] is None and m["box_ap"]["IPH"] == pytest.approx(1 / 3)  # s0's bleed found, s2's two not
  json.dumps(jsonable(m), allow_nan=False)
  text = format_detection(m)
  assert "## Seed 001 Table 2 (as published: each row on its own balanced set)" in text
  assert "## Seed 001 Table 2, all negatives: one balanced set" in text
  assert "| All ICH | All | 3/3 | 0.667 | 0.889 | 0.667 | 0.667 | 0.667 | 0.667 |" in text
  assert "|  | Large | 0/3 | n/a | n/a | n/a | 0.667 | n/a | n/a |" in text
  # FROC: 1 of 6 lesions (s0; s1; s2's IPH and SAH on two slices) at no false positive.
  assert "| Sensitivity |" + " 0.167 |" * 8 in text
  assert "IoU >= 0.3" in text and "| IPH | 3 | 0.333 |" in text
  assert "| IPH | 2 | 1.000 | +0.00 | 1.000 |" in text and "ABC/2 r" in text


def test_published_table2_balances_every_row_with_negatives_drawn_in_one_fixed_order():
  five = [(s,) for s in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")]
  t = D.table2(_table2_preds(), five, threshold=0.5, seed=4, n_boot=0)
  rows = t["published"]["rows"]
  # Seed 001's strata whatever the detector's classes.
  assert list(rows) == ["All ICH", "IPH", "EDH/SDH", "SAH", "IVH"]
  # Studies s0..s5 (ids sorted); s3, s4, s5 are hemorrhage-free. A row with k positives takes the first k
  # negatives of one permutation drawn from seed 4.
  order = np.random.default_rng(4).permutation(6)
  negatives = [int(i) for i in order if i >= 3]
  iph_neg_scores = {3: 0.1, 4: 0.5, 5: 0.2}
  taken = negatives[:2]
  # IPH: s0 0.8 and s2 0.45 against the two drawn negatives.
  neg = np.array([iph_neg_scores[i] for i in taken])
  auc = np.mean([(p > n) + 0.5 * (p == n) for p in (0.8, 0.45) for n in neg])
  spec = float((neg < 0.5).mean())
  _check(rows["IPH"]["all"], n_positive=2, n_negative=2, auc=auc, sensitivity=0.5, specificity=spec,
         accuracy=(1 + (neg < 0.5).sum()) / 4)
  # One positive: one negative, the first of the same order (a subset of the larger row's).
  first = negatives[0]
  _check(rows["IPH"]["small"], n_positive=1, n_negative=1, auc=float(0.8 > iph_neg_scores[first]))
  for name, entry in rows.items():
    for row, e in entry.items():
      assert e["n_negative"] == e["n_positive"], (name, row)
      if e["n_positive"] and not np.isnan(e["ppv"]):   # PPV at 50 % prevalence
        assert e["ppv"] == pytest.approx(e["sensitivity"] / (e["sensitivity"] + 1 - e["specificity"]))
  # All ICH: 3 positives, all 3 negatives; as the one-set table's row.
  _check(rows["All ICH"]["all"], n_positive=3, n_negative=3, auc=8 / 9)
  again = D.table2(_table2_preds(), five, seed=4, n_boot=0)["published"]
  assert json.dumps(jsonable(again)) == json.dumps(jsonable(t["published"]))
  # More positives than negatives: every negative and as many positives, first in the order.
  pos, keep_neg = D.balanced_pairs(np.array([1, 1, 1, 0, 1], bool), np.array([0, 0, 0, 1, 0], bool),
                                   np.array([4, 2, 0, 1, 3]))
  assert pos.tolist() == [False, False, False, False, True] and keep_neg.tolist() == [False, False, False, True, False]


def test_without_a_mask_table2_reads_the_labels_and_mask_sections_are_none():
  p = _table2_preds()
  del p["mask"], p["pred_mask"]
  m = D.detection_metrics(p, PAPER, n_boot=0)
  assert (m["froc"], m["box_ap"], m["volumes"], m["froc_bhx"]) == (None, None, None, None)
  rows = m["table2"]["balanced"]["rows"]
  assert m["table2"]["reference"] == "labels" and list(rows["IPH"]) == ["all"]
  _check(rows["All ICH"]["all"], auc=8 / 9, sensitivity=2 / 3)
  _check(rows["EDH/SDH"]["all"], n_positive=1, auc=1)
  assert np.isnan(rows["All ICH"]["all"]["auc_ci"]).all()


def test_classes_name_groups_and_refuse_unknown_or_repeated_subtypes():
  assert [D.class_name(g) for g in PAPER] == ["IPH", "EDH/SDH", "SAH", "IVH"]
  p = _table2_preds()
  for bad in ((("subdural",), ("subdural", "epidural")), (("chronic",),), ((),)):
    with pytest.raises(ValueError, match="classes="):
      D.table2(p, bad)
