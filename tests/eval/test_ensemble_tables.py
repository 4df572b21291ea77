"""`ich_jax.eval.ensemble_tables` on hand-made scans: scan tables, the lesion subsets, Tables 3 and 4, the
difficult cases and the markdown, with AUCs counted by hand (the smoke experiment end to end:
tests/experiments/test_weighted_ensemble.py)."""
import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import ensemble_tables as T
from ich_jax.eval import prediction_files

SDH, SAH = LABELS.index("subdural"), LABELS.index("subarachnoid")

# Eight scans: three with blood (two subdural, one subarachnoid), five without; two ensembles' probabilities.
IDS = np.array([f"s{i}" for i in range(8)])
ANY = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
BLOOD_ML = np.array([2.0, 30.0, 1.0, 0, 0, 0, 0, 0])
BASIC = np.array([0.9, 0.4, 0.5, 0.2, 0.6, 0.1, 0.3, 0.05])
OTHER = np.array([0.8, 0.7, 0.45, 0.1, 0.2, 0.6, 0.4, 0.05])


def _labels(ids=IDS):
  y = np.zeros((len(ids), 6), bool)
  y[:, 0] = ANY[:len(ids)]
  y[[0, 1], SDH] = True
  y[2, SAH] = True
  return y[:len(ids)]


def _scans(prob, ids=IDS):
  return {"study_id": ids, "prob": prob, "labels": _labels(), "blood_ml": BLOOD_ML}


def test_scan_table_takes_each_studys_most_probable_slice():
  preds = {"study_id": np.array([b"b", b"a", b"b", b"a"]),
           "probabilities": np.array([[0.2] * 6, [0.1] * 6, [0.9] * 6, [0.3] * 6]),
           "labels": np.array([[0] * 6, [0] * 6, [1, 0, 0, 0, 0, 1], [0] * 6]),
           "study_blood_ml": np.array([3.0, 0.0, 3.0, 0.0])}
  scans = T.scan_table(preds)
  assert scans["study_id"].tolist() == ["a", "b"]
  np.testing.assert_array_equal(scans["prob"], [0.3, 0.9])
  np.testing.assert_array_equal(scans["labels"][:, [0, SDH, SAH]], [[False] * 3, [True, True, False]])
  np.testing.assert_array_equal(scans["blood_ml"], [0.0, 3.0])


def test_each_lesion_subset_adds_as_many_scans_without_blood():
  picks = T.subsets(_scans(BASIC), small_ml=5.0)
  assert picks["all"].all()
  for name, lesion in (("subdural", [0, 1]), ("subarachnoid", [2]), ("small", [0, 2])):   # small: ≤ 5 mL of blood
    chosen = np.flatnonzero(picks[name])
    assert set(lesion) <= set(chosen) and len(chosen) == 2 * len(lesion)
    assert not ANY[sorted(set(chosen) - set(lesion))].any()
  # Drawn with a fixed seed: the same scans every time; without volumes there is no "small" subset.
  again = T.subsets(_scans(BASIC), small_ml=5.0)
  assert all(np.array_equal(picks[k], again[k]) for k in picks)
  assert "small" not in T.subsets({"study_id": IDS, "prob": BASIC, "labels": _labels()}, 5.0)


def test_table3_aucs_on_all_scans_and_delong_against_basic():
  rows = {"basic": _scans(BASIC), "other": _scans(OTHER), "missing": None}
  t = T.table3(rows, "basic", small_ml=5.0, n_boot=0, seed=0)
  assert t["subsets"]["all"] == {"n_scans": 8, "n_positive": 3} and t["subsets"]["subdural"]["n_scans"] == 4
  assert t["rows"]["missing"] is None
  basic, other = t["rows"]["basic"]["all"], t["rows"]["other"]["all"]
  # Pairs (with blood, without) ranked right: basic 5 + 4 + 4 of 15, other 5 + 5 + 4.
  assert basic["auc"] == pytest.approx(13 / 15) and basic["auc_ci"] == [None, None]
  assert (basic["n_positive"], basic["n_negative"]) == (3, 5) and basic["delong_vs_basic"] is None
  assert other["auc"] == pytest.approx(14 / 15)
  assert other["delong_vs_basic"]["auc_a"] == pytest.approx(14 / 15)
  assert other["delong_vs_basic"]["auc_b"] == pytest.approx(13 / 15)
  assert t["rows"]["other"]["subdural"]["n_positive"] == 2
  assert T.table3({"basic": None}, "basic", 5.0, 0, 0) == {"error": "the basic ensemble (basic) has no predictions"}
  with pytest.raises(ValueError, match="Table 3: 'other' was evaluated on other scans than 'basic'"):
    T.table3({"basic": _scans(BASIC), "other": _scans(OTHER, IDS[::-1])}, "basic", 5.0, 0, 0)


def _write_run(workdir, ids, prob, labels=None):
  """A classifier's predictions.csv with two slices a study: the scan's probability, and half of it."""
  preds = {"study_id": np.repeat(ids, 2), "slice_index": np.tile([0, 1], len(ids)),
           "probabilities": np.repeat(np.stack([prob, prob / 2], 1).ravel()[:, None], 6, 1)}
  if labels is not None:
    slices = np.repeat(labels, 2, axis=0)
    slices[1::2] = False                                    # the second slice has no blood: the scan keeps its label
    preds["labels"] = slices.astype(np.float32)
  workdir.mkdir()
  prediction_files.write_predictions_csv(preds, workdir / "predictions.csv")
  return str(workdir)


def test_table4_compares_the_final_ensemble_on_common_scans(tmp_path):
  final = _scans(BASIC)
  six = IDS[:6]
  flipped = _labels()[:6].copy()
  flipped[3, 0] = True
  runs = {"vgg19": _write_run(tmp_path / "vgg19", six, np.array([0.7, 0.6, 0.65, 0.3, 0.1, 0.45]), _labels()[:6]),
          "resnet": str(tmp_path / "nowhere"),
          "unlabelled": _write_run(tmp_path / "unlabelled", six, np.full(6, 0.5)),
          "elsewhere": _write_run(tmp_path / "elsewhere", np.array(["x0", "x1"]), np.array([0.5, 0.5]),
                                  _labels()[:2]),
          "relabelled": _write_run(tmp_path / "relabelled", six, np.full(6, 0.5), flipped)}
  t = T.table4(final, runs, n_boot=0, seed=0, threshold=0.5)
  assert t["resnet"] == {"status": f"not run: no predictions.csv in {tmp_path / 'nowhere'}"}
  assert t["unlabelled"] == {"status": f"{runs['unlabelled']}: predictions without labels"}
  assert t["elsewhere"]["status"].startswith("no scan in common with the ensemble's held-out split")
  assert t["relabelled"]["status"] == f"{runs['relabelled']}: its labels of the common scans differ from the ensemble's"
  e = t["vgg19"]
  assert e["status"] == "ok" and e["n_scans"] == 6 and e["workdir"] == runs["vgg19"]
  # s0–s2 with blood, s3–s5 without: the ensemble ranks 3 + 2 + 2 of 9 pairs right, the classifier all 9.
  assert e["ensemble"]["auc"] == pytest.approx(7 / 9) and e["classifier"]["auc"] == pytest.approx(1.0)
  assert (e["ensemble"]["sensitivity"], e["ensemble"]["specificity"]) == pytest.approx((2 / 3, 2 / 3))
  assert (e["classifier"]["sensitivity"], e["classifier"]["specificity"]) == (1.0, 1.0)
  assert e["delong"]["auc_a"] == pytest.approx(7 / 9) and e["delong"]["auc_b"] == pytest.approx(1.0)


def test_difficult_scans_missed_ones_first():
  hard = T.difficult(_scans(BASIC))
  # With blood scored ≤ 0.6 (s1 0.4, s2 0.5: lowest first), then without blood scored ≥ 0.4 (s4 0.6).
  assert [(r["study_id"], r["any"], r["prob_any"]) for r in hard] == [("s1", 1, 0.4), ("s2", 1, 0.5), ("s4", 0, 0.6)]
  assert [r["subtypes"] for r in hard] == ["subdural", "subarachnoid", ""]
  assert [r["blood_ml"] for r in hard] == [30.0, 1.0, 0.0]


def test_markdown_fills_the_tables_and_says_what_is_missing(tmp_path):
  final = _scans(BASIC)
  runs = {"vgg19": _write_run(tmp_path / "vgg19", IDS[:6], np.array([0.7, 0.6, 0.65, 0.3, 0.1, 0.45]),
                              _labels()[:6]), "resnet": str(tmp_path / "nowhere")}
  t = {"table3": T.table3({"basic": final, "other": _scans(OTHER), "missing": None}, "basic", 5.0, 0, 0),
       "table4": T.table4(final, runs, 0, 0, 0.5), "difficult": T.difficult(final)}
  lines = T.format_markdown(t, title="Weighted ensemble", meta="smoke", max_difficult=2).splitlines()
  assert lines[:3] == ["# Weighted ensemble", "", "smoke"]
  assert "| Ensemble | AUC all | p all | AUC subdural | p subdural | AUC subarachnoid | p subarachnoid | AUC small | " \
         "p small |" in lines
  # n_boot=0: no bootstrap, so no interval: the AUC alone.
  assert next(r for r in lines if r.startswith("| basic |")).startswith("| basic | 0.867 | — |")
  assert "| missing |" + " not run |" * 8 in lines
  assert next(r for r in lines if r.startswith("| vgg19 |")).startswith(
      "| vgg19 | 6 | 1.000 vs 0.778 | 1.000 vs 0.667 | 1.000 vs 0.667 |")
  assert f"| resnet | not run: no predictions.csv in {tmp_path / 'nowhere'} |  |  |  |  |" in lines
  assert ("Final ensemble: 3 difficult scans, 2 with blood scored ≤ 0.6 and 1 without blood scored ≥ 0.4; all in "
          "difficult_cases.csv, the first 2 here.") in lines
  assert "| s1 | 1 | 0.400 | subdural | 30.000 |" in lines and not any(r.startswith("| s4 |") for r in lines)
  empty = T.format_markdown({"table3": {"error": "the basic ensemble (basic) has no predictions"}, "table4": {},
                             "difficult": []}, title="T", meta="m")
  assert "the basic ensemble (basic) has no predictions" in empty
  assert "No classifier runs configured (config experiment.strong_vs_weak, experiment.classifiers)." in empty


def test_load_prefers_the_npz_and_says_none_without_predictions(tmp_path):
  assert T.load(tmp_path) is None
  _write_run(tmp_path / "run", IDS[:2], np.array([0.5, 0.5]))
  assert len(T.load(tmp_path / "run")["study_id"]) == 4
  np.savez(tmp_path / "run" / "predictions.npz", study_id=np.array(["z"]), probabilities=np.zeros((1, 6)))
  assert T.load(tmp_path / "run")["study_id"].tolist() == ["z"]
