import numpy as np
import pytest

from ich_jax.eval import metrics as M


def _auc_pairs(y, s):
  pos, neg = s[y == 1], s[y == 0]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0) + 0.5 * (diff == 0)).mean()


def test_roc_auc_matches_pair_count_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(20):
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 8, 200).astype(float)  # many ties
    assert M.roc_auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)


def test_roc_auc_one_class_is_nan_and_bad_input_named():
  assert np.isnan(M.roc_auc(np.ones(5), np.arange(5.0)))
  with pytest.raises(ValueError, match="non-finite"):
    M.roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
  with pytest.raises(ValueError, match="0/1"):
    M.roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))


def test_binary_stats_counts():
  y = np.array([1, 1, 1, 0, 0, 0, 0])
  s = np.array([.9, .5, .2, .7, .1, .1, .49])
  st = M.binary_stats(y, s, 0.5)
  assert (st["tp"], st["fn"], st["fp"], st["tn"]) == (2, 1, 1, 3)
  assert st["sensitivity"] == pytest.approx(2 / 3) and st["specificity"] == pytest.approx(3 / 4)


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


def test_size_bins_are_seed_001s():
  got = M.size_bin(np.array([0.0, 0.005, 0.01, 4.99, 5.0, 25.0, 25.01, 80.0]))
  assert list(got) == ["none", "punctate", "small", "small", "medium", "medium", "large", "large"]
  assert M.size_bin(3.0) == "small"


def test_scan_scores_max_and_mean():
  ids, s = M.scan_scores([0.1, 0.9, 0.3, 0.2], ["b", "b", "a", "a"])
  assert list(ids) == ["a", "b"] and np.allclose(s, [0.3, 0.9])
  _, s = M.scan_scores(np.array([[1, 0], [3, 2.0], [5, 5]]), ["x", "x", "y"], reduce="mean")
  assert np.allclose(s, [[2, 1], [5, 5]])
