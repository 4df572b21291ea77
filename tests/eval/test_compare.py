"""Runs side by side on the same studies: joined on study_id, AUC per class × size bin, DeLong against the first."""
import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import compare, metrics as M
from ich_jax.eval.prediction_files import write_predictions_csv

SAH = LABELS.index("subarachnoid")


def _run(scores_any, order=None):
  """Two slices per study; the first carries the study's score, the second scores 0."""
  labels = np.array([[0, 0, 0, 0, 0, 0]] * 3 + [[1, 0, 0, 0, 1, 0]] * 2 + [[1, 0, 1, 0, 0, 0]] * 2, np.float32)
  ml = np.array([0, 0, 0, 0.005, 2.0, 30.0, 0.004])
  ids = np.array([f"s{k}" for k in range(7)])
  n = len(ids)
  probs = np.zeros((2 * n, 6), np.float32)
  probs[0::2, 0] = scores_any
  probs[0::2, SAH] = scores_any
  out = {"study_id": np.repeat(ids, 2), "labels": np.repeat(labels, 2, axis=0),
         "probabilities": probs, "study_blood_ml": np.repeat(ml, 2).astype(np.float32),
         "series_id": np.repeat(ids, 2), "slice_index": np.tile([0, 1], n).astype(np.int32)}
  if order is not None:
    out = {k: v[order] for k, v in out.items()}
  return out


def _row(m, cls, size):
  return next(r for r in m["rows"] if r["class"] == cls and r["size"] == size)


def test_auc_per_bin_against_every_healthy_study_and_delong_against_the_first():
  a = _run([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25])
  b = _run([0.1, 0.2, 0.3, 0.15, 0.8, 0.7, 0.05], order=np.arange(14)[::-1])  # row order must not matter
  m = compare.compare_runs({"det": a, "cnn": b})
  assert m["runs"] == ["det", "cnn"] and m["n_studies"] == 7
  row = _row(m, "any", "all")
  assert (row["n_positive"], row["n_negative"]) == (4, 3)
  # a: positives 0.9, 0.8, 0.7, 0.25 vs healthy 0.1, 0.2, 0.3: 11 of 12 pairs won.
  assert row["auc"]["det"] == pytest.approx(11 / 12)
  assert row["auc"]["cnn"] == pytest.approx(7 / 12)
  y = np.array([0, 0, 0, 1, 1, 1, 1], bool)
  want = M.delong_test(y, np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25]),
                       np.array([0.1, 0.2, 0.3, 0.15, 0.8, 0.7, 0.05]))["p_value"]
  assert row["p_value"]["cnn"] == pytest.approx(want)
  # Punctate: studies 3 (0.005 mL) and 6 (0.004 mL) against the three healthy ones.
  punct = _row(m, "any", "punctate")
  assert punct["n_positive"] == 2 and punct["auc"]["det"] == pytest.approx(5 / 6)
  assert punct["auc"]["cnn"] == pytest.approx(1 / 6)
  assert _row(m, "any", "punctate+small")["n_positive"] == 3
  assert _row(m, "subarachnoid", "all")["n_positive"] == 2
  assert not [r for r in m["rows"] if r["n_positive"] == 0]   # empty rows are left out
  text = "\n".join(compare.format_comparison(m))
  assert "| AUC det | AUC cnn | p cnn |" in text and "| ICH | All | 4/3 | 0.917 | 0.583 |" in text


def test_other_data_is_refused_and_missing_runs_are_listed(tmp_path):
  a = _run([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25])
  other = _run([0.1] * 7)
  other["study_id"] = np.char.add(other["study_id"], "x")
  with pytest.raises(ValueError, match="share no study_id"):
    compare.compare_runs({"a": a, "b": other})
  relabelled = _run([0.1] * 7)
  relabelled["labels"] = relabelled["labels"].copy()
  relabelled["labels"][0, 0] = 1
  with pytest.raises(ValueError, match="disagree on the labels of study 's0'"):
    compare.compare_runs({"a": a, "b": relabelled})

  (tmp_path / "cnn").mkdir()
  write_predictions_csv(_run([0.1, 0.2, 0.3, 0.15, 0.8, 0.7, 0.05]), tmp_path / "cnn" / "predictions.csv")
  m = compare.compare_workdirs(a, {"cnn": tmp_path / "cnn", "2d": tmp_path / "nothing"}, this_name="det")
  assert m["runs"] == ["det", "cnn"] and m["missing"] == {"2d": str(tmp_path / "nothing")}
  assert _row(m, "any", "all")["auc"]["cnn"] == pytest.approx(7 / 12)
  text = "\n".join(compare.format_comparison(m))
  assert f"`{tmp_path / 'nothing'}` (not found" in text


def test_runs_on_other_renderings_of_the_same_studies_join_on_patient_and_z():
  """small and small256 hold the same phantoms under different UIDs: joined on patient, slice count and z."""
  a = _run([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25])
  b = _run([0.1, 0.2, 0.3, 0.15, 0.8, 0.7, 0.05])
  for run, uid in ((a, "1.2.3."), (b, "9.8.7.")):
    run["patient_id"] = np.char.add("p", np.char.mod("%d", np.repeat(np.arange(7) // 2, 2)))  # two studies each
    run["z_position"] = np.tile([0.0, 5.0], 7) + np.repeat(np.arange(7) % 2 * 100.0, 2)
    run["study_id"] = np.char.add(uid, run["study_id"])
  b = {k: v[::-1] for k, v in b.items()}
  m = compare.compare_runs({"det": a, "cnn": b})
  assert m["joined_on"] == "patient_id, slice count, first z" and m["n_studies"] == 7
  assert _row(m, "any", "all")["auc"]["cnn"] == pytest.approx(7 / 12)
  b["z_position"] = b["z_position"] + 1.0     # other slices: nothing in common
  with pytest.raises(ValueError, match="share no study_id"):
    compare.compare_runs({"det": a, "cnn": b})
