"""The classification metrics from first principles, and two prediction sets compared with DeLong's test."""
import json

import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import __main__ as cli
from ich_jax.eval import classification, prediction_files
from ich_jax.eval import metrics as M
from tests.eval import fake_predictions as fake


def test_table_numbers_from_first_principles():
  preds = fake.preds(seed=1)
  m = classification.classification_metrics(preds, n_boot=fake.N_BOOT, seed=0)
  y, p, study = preds["labels"] > 0.5, preds["probabilities"].astype(np.float64), preds["study_id"]
  ids = sorted(set(study))
  scan_y = np.array([[y[study == s, c].any() for c in range(6)] for s in ids])
  scan_p = np.array([[p[study == s, c].max() for c in range(6)] for s in ids])
  scan_ml = np.array([preds["study_blood_ml"][study == s][0] for s in ids])
  assert m["n_scans"] == len(ids) and m["n_positive_scans"] == scan_y[:, 0].sum()
  for c, name in enumerate(LABELS):
    assert m["scan"][name]["auc"] == pytest.approx(M.roc_auc(scan_y[:, c], scan_p[:, c]))
    assert m["slice"][name]["sensitivity"] == pytest.approx((p[y[:, c], c] >= 0.5).mean())
  # Slice-level intervals resample whole studies; scan-level ones resample scans.
  lo_hi = M.bootstrap_ci(M.roc_auc, y[:, 0], p[:, 0], n_boot=fake.N_BOOT, seed=0, groups=study)[1:]
  assert m["slice"]["any"]["auc_ci"] == pytest.approx(list(lo_hi))
  lo_hi = M.bootstrap_ci(M.roc_auc, scan_y[:, 0], scan_p[:, 0], n_boot=fake.N_BOOT, seed=0)[1:]
  assert m["scan"]["any"]["auc_ci"] == pytest.approx(list(lo_hi))
  # Seed 001 Table 2: large bleeds (> 25 mL) against hemorrhage-free scans only.
  large = scan_y[:, 0] & (scan_ml > 25)
  keep = large | ~scan_y[:, 0]
  row = m["strata"]["scan"]["any"]["large"]
  assert row["n_positive"] == large.sum() > 0
  assert row["auc"] == pytest.approx(M.roc_auc(large[keep], scan_p[keep, 0]))
  assert m["size_bins_any"]["large"]["scan"]["auc"] == row["auc"]
  # Subtype rows: the subtype's positives vs scans with no blood at all (not vs other subtypes).
  sub = m["strata"]["scan"]["subdural"]["all"]
  pos = scan_y[:, 5]
  assert sub["n_negative"] == (~scan_y[:, 0]).sum()
  assert sub["auc"] == pytest.approx(M.roc_auc(pos[pos | ~scan_y[:, 0]], scan_p[pos | ~scan_y[:, 0], 5]))
  sweep = {r["threshold"]: r for r in m["threshold_sweep_any"]["slice"]}
  assert list(sweep) == [0.5, 0.6, 0.7, 0.8, 0.9]
  assert sweep[0.7]["specificity"] == pytest.approx((p[~y[:, 0], 0] < 0.7).mean())
  assert sweep[0.9]["accuracy"] == pytest.approx(((p[:, 0] >= 0.9) == y[:, 0]).mean())
  hard = (scan_y[:, 0] & (scan_p[:, 0] <= 0.6)) | (~scan_y[:, 0] & (scan_p[:, 0] >= 0.4))
  assert m["difficult_scans"]["n"] == hard.sum()
  mimic_neg = (preds["mimic"] > 0) & ~y[:, 0]
  assert m["mimic_negative_slices"]["false_positive_rate"] == pytest.approx((p[mimic_neg, 0] >= 0.5).mean())


def test_compare_two_prediction_sets_with_delong(tmp_path):
  a, b = fake.preds(seed=4, n_studies=40), fake.preds(seed=5, n_studies=40, noise=2.5)
  path_a = prediction_files.write_predictions_csv(a, tmp_path / "model_a.csv")
  path_b = prediction_files.write_predictions_csv(b, tmp_path / "model_b.csv")
  fake.shuffle_rows(path_b)  # the same slices in another order
  assert cli.main(["--predictions", str(path_a), "--compare", str(path_b), "--n-boot", "0",
                   "--out", str(tmp_path / "o")]) == 0
  m = json.loads((tmp_path / "o" / "metrics.json").read_text())
  study = a["study_id"]
  _, scan_y = M.scan_scores(a["labels"][:, 0], study)
  _, scan_a = M.scan_scores(a["probabilities"][:, 0], study)
  _, scan_b = M.scan_scores(b["probabilities"][:, 0], study)
  want = M.delong_test(scan_y, scan_a, scan_b)
  got = m["comparison"]["scan"]["any"]
  assert (m["comparison"]["name_a"], m["comparison"]["name_b"]) == ("model_a", "model_b")
  assert got["auc_a"] == pytest.approx(want["auc_a"]) and got["p_value"] == pytest.approx(want["p_value"])
  assert got["auc_a"] > got["auc_b"] and got["z"] > 0
  slice_want = M.delong_test(a["labels"][:, 3], a["probabilities"][:, 3], b["probabilities"][:, 3])
  assert m["comparison"]["slice"]["intraventricular"]["z"] == pytest.approx(slice_want["z"])
  md = (tmp_path / "o" / "report.md").read_text()
  assert "## Comparison: model_a vs model_b (DeLong test, two-sided)" in md
  assert "not computed (n_boot = 0)" in md
  other = fake.preds(seed=5, n_studies=39)
  with pytest.raises(ValueError, match="have no row in compare"):
    prediction_files.align(a, other)
