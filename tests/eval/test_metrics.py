import numpy as np
import pytest
from scipy import stats

from ich_jax.eval import metrics as M


def _psi(y, s):
  """Mann–Whitney kernel for every (positive, negative) pair: 1, 1/2 for ties, 0."""
  pos, neg = s[y == 1], s[y == 0]
  diff = pos[:, None] - neg[None, :]
  return (diff > 0) + 0.5 * (diff == 0)


def _auc_pairs(y, s):
  return _psi(y, s).mean()


def _delong_direct(y, scores):
  """DeLong et al. (1988) straight from the definition: O(n²) structural components."""
  v10 = np.stack([_psi(y, s).mean(1) for s in scores])  # per positive
  v01 = np.stack([_psi(y, s).mean(0) for s in scores])  # per negative
  m, n = v10.shape[1], v01.shape[1]
  s10 = np.array([[np.sum((v10[a] - v10[a].mean()) * (v10[b] - v10[b].mean())) / (m - 1) for b in range(2)]
                  for a in range(2)])
  s01 = np.array([[np.sum((v01[a] - v01[a].mean()) * (v01[b] - v01[b].mean())) / (n - 1) for b in range(2)]
                  for a in range(2)])
  cov = s10 / m + s01 / n
  aucs = v10.mean(1)
  z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  return aucs, cov, z


def test_roc_auc_matches_pair_count_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    # Integer scores (many ties) and rounded floats with unbalanced classes.
    s = rng.integers(0, 8, n).astype(float) if trial % 2 else np.round(rng.normal(size=n) + y, 1)
    assert M.roc_auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)


def test_roc_auc_one_class_is_nan_and_bad_input_named():
  assert np.isnan(M.roc_auc(np.ones(5), np.arange(5.0)))
  with pytest.raises(ValueError, match=r"score has 1 non-finite value\(s\), first at index 1: nan"):
    M.roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
  with pytest.raises(ValueError, match="0/1"):
    M.roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match=r"y_true shape \(2,\) != score shape \(3,\)"):
    M.roc_auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_roc_curve_points_and_area():
  y = np.array([1, 0, 1, 1, 0, 0])
  s = np.array([0.9, 0.8, 0.8, 0.3, 0.2, 0.1])
  fpr, tpr, thr = M.roc_curve(y, s)
  # One point per distinct score, the tie at 0.8 taken as one step.
  np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.3, 0.2, 0.1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1, 1])
  np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 500)
  s = rng.integers(0, 20, 500) + 3 * y
  fpr, tpr, thr = M.roc_curve(y, s)
  assert np.trapezoid(tpr, fpr) == pytest.approx(M.roc_auc(y, s), abs=1e-12)
  # Each point is binary_stats at its threshold.
  st = M.binary_stats(y, s, thr[5])
  assert (tpr[5], 1 - fpr[5]) == pytest.approx((st["sensitivity"], st["specificity"]))
  fpr, tpr, _ = M.roc_curve(np.ones(4), np.arange(4.0))
  assert np.isnan(fpr).all() and tpr[-1] == 1


def test_binary_stats_counts():
  y = np.array([1, 1, 1, 0, 0, 0, 0])
  s = np.array([.9, .5, .2, .7, .1, .1, .49])
  st = M.binary_stats(y, s, 0.5)
  assert (st["tp"], st["fn"], st["fp"], st["tn"]) == (2, 1, 1, 3)
  assert st["sensitivity"] == pytest.approx(2 / 3) and st["specificity"] == pytest.approx(3 / 4)
  assert st["ppv"] == pytest.approx(2 / 3) and st["npv"] == pytest.approx(3 / 4)
  assert st["accuracy"] == pytest.approx(5 / 7)
  assert np.isnan(M.binary_stats([0, 0], [0.9, 0.1])["sensitivity"])


def test_weighted_log_loss_against_formula():
  y = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  p = np.array([[0.8, 0.1, 0.6, 0.1, 0.1, 0.0], [0.3, 0.2, 0.1, 0.1, 0.1, 0.1]])
  w = np.array([2, 1, 1, 1, 1, 1.0])
  pc = np.clip(p, 1e-7, 1 - 1e-7)
  ll = -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
  expected = np.mean((ll * w).sum(1) / w.sum())
  assert M.weighted_log_loss(y, p) == pytest.approx(expected)
  # Perfect predictions are clipped, not -log(0).
  assert M.weighted_log_loss(y, y.astype(float)) == pytest.approx(-np.log(1 - 1e-7), rel=1e-3)


def test_delong_matches_direct_structural_components():
  rng = np.random.default_rng(2)
  for trial in range(8):
    n = int(rng.integers(20, 150))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    a = np.round(rng.normal(size=n) + y, 1)          # ties within a
    b = np.round(a + rng.normal(scale=1.5, size=n), 0)  # correlated with a, heavy ties
    aucs, cov, z = _delong_direct(y, [a, b])
    got = M.delong_test(y, a, b)
    assert (got["auc_a"], got["auc_b"]) == pytest.approx(tuple(aucs), abs=1e-12)
    assert got["z"] == pytest.approx(z, rel=1e-9)
    assert got["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    _, lo, hi = M.delong_ci(y, a)
    half = 1.959963984540054 * np.sqrt(cov[0, 0])
    assert (lo, hi) == pytest.approx((max(0, aucs[0] - half), min(1, aucs[0] + half)), abs=1e-12)


def test_delong_edge_cases():
  rng = np.random.default_rng(3)
  y = rng.integers(0, 2, 50)
  s = rng.normal(size=50)
  same = M.delong_test(y, s, s.copy())
  assert (same["z"], same["p_value"]) == (0.0, 1.0)
  one = M.delong_test(np.ones(5), np.arange(5.0), np.arange(5.0))
  assert all(np.isnan(v) for v in one.values())
  assert all(np.isnan(v) for v in M.delong_ci(np.zeros(4), np.arange(4.0)))
  with pytest.raises(ValueError, match="score_b has 1 non-finite"):
    M.delong_test(y, s, np.r_[s[:-1], np.inf])
  # A clearly better score on many cases: tiny p, sign of z follows the difference.
  y = np.r_[np.ones(500), np.zeros(500)].astype(int)
  good, poor = rng.normal(size=1000) + 2 * y, rng.normal(size=1000) + 0.5 * y
  r = M.delong_test(y, good, poor)
  assert r["z"] > 5 and r["p_value"] < 1e-6
  assert M.delong_test(y, poor, good)["z"] == pytest.approx(-r["z"])


def test_bootstrap_reproducible_and_groups():
  rng = np.random.default_rng(4)
  y = rng.integers(0, 2, 200)
  s = rng.normal(size=200) + y
  first = M.bootstrap_ci(M.roc_auc, y, s, n_boot=100, seed=7)
  assert M.bootstrap_ci(M.roc_auc, y, s, n_boot=100, seed=7) == first
  assert M.bootstrap_ci(M.roc_auc, y, s, n_boot=100, seed=8) != first
  assert first[0] == M.roc_auc(y, s) and first[1] < first[0] < first[2]
  # One row per group resamples exactly as rows do.
  assert M.bootstrap_ci(M.roc_auc, y, s, n_boot=100, seed=7, groups=np.arange(200)) == first
  # Every case repeated 5 times (slices of one scan): resampling the groups gives
  # the original cases' interval exactly (duplicating every case leaves the AUC
  # unchanged); resampling rows treats the copies as independent: too narrow.
  y5, s5, g5 = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(200), 5)
  grouped = M.bootstrap_ci(M.roc_auc, y5, s5, n_boot=100, seed=7, groups=g5)
  assert grouped == pytest.approx(first, abs=1e-12)
  naive = M.bootstrap_ci(M.roc_auc, y5, s5, n_boot=100, seed=7)
  assert naive[2] - naive[1] < 0.6 * (first[2] - first[1])
  # Stratified replicates keep the class counts; with one class the point is NaN.
  seen = []
  M.bootstrap_ci(lambda yy, ss: seen.append(int(yy.sum())) or 0.0, y, s, n_boot=5)
  assert seen == [int(y.sum())] * 6
  assert all(np.isnan(v) for v in M.bootstrap_ci(M.roc_auc, np.ones(10), np.arange(10.0), n_boot=10))


def test_bootstrap_interval_covers_true_auc_at_nominal_rate():
  # Binormal scores, unit variances, shift d: the true AUC is Φ(d/√2).
  rng = np.random.default_rng(5)
  d = 1.0
  true_auc = stats.norm.cdf(d / np.sqrt(2))
  y = np.r_[np.ones(100), np.zeros(100)].astype(bool)
  boot_hits = delong_hits = 0
  sims = 150
  for i in range(sims):
    s = rng.normal(size=200) + d * y
    _, lo, hi = M.bootstrap_ci(M.roc_auc, y, s, n_boot=150, seed=i)
    boot_hits += lo <= true_auc <= hi
    _, lo, hi = M.delong_ci(y, s)
    delong_hits += lo <= true_auc <= hi
  # 95% nominal; 150 simulations have a standard error of about 0.018.
  assert 0.88 <= boot_hits / sims <= 0.99
  assert 0.88 <= delong_hits / sims <= 0.99


def test_dice_jaccard_edge_cases():
  empty = np.zeros((4, 4), bool)
  blob = np.zeros((4, 4), bool)
  blob[1:3, 1:3] = True
  assert np.isnan(M.dice(empty, empty)) and np.isnan(M.jaccard(empty, empty))
  assert M.dice(empty, empty, empty=1.0) == 1.0 and M.jaccard(empty, empty, empty=0.0) == 0.0
  assert M.dice(empty, blob) == 0.0 and M.dice(blob, empty) == 0.0 and M.jaccard(blob, empty) == 0.0
  assert M.dice(blob, blob) == 1.0 and M.jaccard(blob, blob) == 1.0
  pred = np.zeros(6, int)
  pred[[0, 1, 2]] = 1
  true = np.zeros(6, int)
  true[[2, 3]] = 4  # a subtype label map: non-zero is blood
  assert M.dice(pred, true) == pytest.approx(2 / 5) and M.jaccard(pred, true) == pytest.approx(1 / 4)
  per_slice = M.dice(np.stack([empty, blob, blob]), np.stack([empty, blob, empty]), axis=(1, 2))
  np.testing.assert_array_equal(np.isnan(per_slice), [True, False, False])
  np.testing.assert_array_equal(per_slice[1:], [1.0, 0.0])
  rng = np.random.default_rng(6)
  a, b = rng.random((2, 10, 8, 8)) > 0.6
  d, j = M.dice(a, b, axis=(1, 2)), M.jaccard(a, b, axis=(1, 2))
  np.testing.assert_allclose(j, d / (2 - d))
  with pytest.raises(ValueError, match=r"pred mask shape \(4, 4\) != true mask shape \(6,\)"):
    M.dice(blob, true)


def _ellipsoid(semi_mm, spacing, shape, angle_deg=0.0):
  """Voxel centres inside an ellipsoid (z, y, x semi-axes), rotated in-plane by angle_deg."""
  z, yy, xx = [(np.arange(n) - (n - 1) / 2) * d for n, d in zip(shape, spacing)]
  z, yy, xx = np.meshgrid(z, yy, xx, indexing="ij")
  t = np.deg2rad(angle_deg)
  u, v = np.cos(t) * yy + np.sin(t) * xx, -np.sin(t) * yy + np.cos(t) * xx
  return (z / semi_mm[0]) ** 2 + (u / semi_mm[1]) ** 2 + (v / semi_mm[2]) ** 2 <= 1


@pytest.mark.parametrize("semi_mm, spacing, angle", [
    ((15.0, 30.0, 20.0), (1.0, 1.0, 1.0), 0.0),
    ((20.0, 25.0, 12.0), (5.0, 0.5, 0.5), 30.0),    # thick slices, rotated in-plane
    ((9.0, 14.0, 8.0), (2.5, 0.45, 0.45), 65.0),    # a small medium-size bleed (~4 mL)
])
def test_abc2_of_voxelised_ellipsoid_within_10_percent(semi_mm, spacing, angle):
  shape = [int(2 * max(semi_mm) / d) + 6 for d in spacing]
  mask = _ellipsoid(semi_mm, spacing, shape, angle)
  true_ml = 4 / 3 * np.pi * np.prod(semi_mm) / 1000
  assert M.abc2_ml(mask, spacing) == pytest.approx(true_ml, rel=0.10)
  assert M.volume_ml(mask, spacing) == pytest.approx(true_ml, rel=0.05)


def test_abc2_and_volume_details():
  one = np.zeros((3, 5, 5), bool)
  one[1, 2, 2] = True
  # A single voxel: A is the pixel's diagonal, B the other diagonal: ABC/2 = dy·dx·dz.
  assert M.abc2_ml(one, (2.0, 0.5, 0.5)) == pytest.approx(0.5 * 0.5 * 2.0 / 1000)
  assert M.volume_ml(one, (2.0, 0.5, 0.5)) == pytest.approx(0.5 / 1000)
  bar = np.zeros((2, 10, 10), bool)
  bar[:, 4, 1:9] = True  # 8 × 1 pixels on 2 slices: A = √(8² + 1²) along the diagonal
  a = np.hypot(8, 1)
  b = 16 / a  # the 8×1 rectangle's extent perpendicular to its diagonal: (8·1 + 1·8) / √65
  assert M.abc2_ml(bar, (3.0, 1.0, 1.0)) == pytest.approx(a * b * 6.0 / 2 / 1000)
  assert M.abc2_ml(np.zeros((2, 3, 3)), (1, 1, 1)) == 0.0
  with pytest.raises(ValueError, match=r"spacing_mm=\(1.0, 1.0\) must hold 3 positive values"):
    M.volume_ml(one, (1.0, 1.0))
  with pytest.raises(ValueError, match=r"\[slices, rows, cols\]"):
    M.abc2_ml(one[0], (1.0, 1.0))


def test_pearson_r():
  rng = np.random.default_rng(7)
  x = rng.normal(size=50)
  y = 2 * x + rng.normal(size=50)
  assert M.pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
  assert M.pearson_r(x, -3 * x + 1) == pytest.approx(-1.0)
  assert np.isnan(M.pearson_r(x, np.ones(50))) and np.isnan(M.pearson_r([1.0], [2.0]))


def test_fleiss_kappa_textbook_example():
  # Fleiss (1971) via Wikipedia's worked example: 10 subjects, 14 raters, 5
  # categories; n_ij = raters putting subject i in category j. kappa = 0.210.
  counts = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                     [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
  ratings = np.array([np.repeat(np.arange(1, 6), row) for row in counts])
  assert M.fleiss_kappa(ratings) == pytest.approx(0.210, abs=5e-4)
  # Labels of any type, raters in any order.
  names = np.array(list("abcde"))[ratings - 1]
  rng = np.random.default_rng(8)
  assert M.fleiss_kappa(rng.permuted(names, axis=1)) == pytest.approx(M.fleiss_kappa(ratings))
  assert M.fleiss_kappa([[0, 0, 0], [1, 1, 1], [1, 1, 1]]) == pytest.approx(1.0)
  assert np.isnan(M.fleiss_kappa(np.ones((4, 3))))
  with pytest.raises(ValueError, match="item 1, rater 0: nan"):
    M.fleiss_kappa([[0.0, 1.0], [np.nan, 1.0]])


def test_difficult_cases_seed_000_rule():
  y = np.array([1, 1, 1, 0, 0, 0])
  s = np.array([0.6, 0.61, 0.1, 0.4, 0.39, 0.95])
  np.testing.assert_array_equal(M.difficult_cases(y, s), [True, False, True, True, False, True])
  np.testing.assert_array_equal(M.difficult_cases(y, s, pos_max=0.5, neg_min=0.9),
                                [False, False, True, False, False, True])


def test_scan_scores_max_and_mean():
  ids, s = M.scan_scores([0.1, 0.9, 0.3, 0.2], ["b", "b", "a", "a"])
  assert list(ids) == ["a", "b"] and np.allclose(s, [0.3, 0.9])
  _, s = M.scan_scores(np.array([[1, 0], [3, 2.0], [5, 5]]), ["x", "x", "y"], reduce="mean")
  assert np.allclose(s, [[2, 1], [5, 5]])
