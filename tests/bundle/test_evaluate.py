"""`python -m ich_jax.bundle evaluate`: a bundle scored on any builder's split, as an external test set."""
import csv
import json
import shutil

import numpy as np
import pytest

from ich_jax import atomic
from ich_jax.bundle import __main__ as cli
from ich_jax.bundle import evaluate as E
from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files


def test_on_its_own_test_split_it_predicts_what_the_runs_evaluation_predicted(runs, tiny_data_dir, tmp_path):
  """The bundle path (series by series, the bundle's preprocessing) against the loop's evaluation."""
  from ich_jax.train import evaluate

  run = shutil.copytree(runs["cls"], tmp_path / "cls")
  evaluate.evaluate(runs["cls_config"], run)
  loop = prediction_files.read_predictions(run / "predictions.csv")
  t = E.evaluate(runs["root"] / "cls_bundle",
                 "synthetic_ich/tiny:test", tmp_path / "out", data_dir=tiny_data_dir, n_boot=20)
  mine = prediction_files.read_predictions(tmp_path / "out" / "predictions.csv")
  key = lambda p: [f"{s}|{i}" for s, i in zip(p["series_id"], p["slice_index"])]  # noqa: E731
  order = np.argsort(key(mine))
  ref = np.argsort(key(loop))
  assert sorted(key(mine)) == sorted(key(loop))
  np.testing.assert_allclose(mine["probabilities"][order], loop["probabilities"][ref], atol=2e-5)
  np.testing.assert_array_equal(mine["labels"][order], loop["labels"][ref])
  # Slice-level labels here: both levels scored, as the run's own report scores them.
  r = t["results"]["synthetic_ich.test"][t["table_model"]]
  run_metrics = json.loads((run / "metrics.json").read_text())
  assert r["slice"]["any"]["auc"] == pytest.approx(run_metrics["slice"]["any"]["auc"], abs=1e-6)
  assert r["scan"]["any"]["auc"] == pytest.approx(run_metrics["scan"]["any"]["auc"], abs=1e-6)
  assert atomic.kind_of(tmp_path / "out") == E.KIND


def test_on_cq500_majority_labels_scan_level_only_and_reader_agreement(runs, tiny_data_dir, tmp_path, capsys):
  from tests.data_builders import fixtures

  fx = fixtures.write_cq500(tmp_path / "cq500")
  out = tmp_path / "out"
  rc = cli.main(["evaluate", "--model", str(runs["root"] / "cls_bundle"), "--dataset", "cq500/slices256:test",
                 "--data-dir", str(tmp_path / "tfds"), "--manual-dir", str(fx.root), "--out", str(out),
                 "--n-boot", "20"])
  assert rc == 0
  preds = prediction_files.read_predictions(out / "predictions.csv")
  ids, y = M.scan_scores(preds["labels"], preds["study_id"])
  assert sorted(map(tuple, y.tolist())) == sorted(tuple(fx.labels[n].tolist()) for n in fx.selected)
  t = json.loads((out / "metrics.json").read_text())
  r = t["results"]["cq500.test"][t["table_model"]]
  _, p = M.scan_scores(preds["probabilities"], preds["study_id"])
  assert r["slice"] is None and r["scan"]["any"]["auc"] == pytest.approx(M.roc_auc(y[:, 0] > 0.5, p[:, 0]))
  reads = np.stack([fx.reads[n] for n in sorted(fx.selected)])
  assert t["reader_agreement"]["cq500.test"]["fleiss_kappa"]["intraparenchymal"] == pytest.approx(
      M.fleiss_kappa(reads[:, :, 2] > 0.5), nan_ok=True)
  # Every series in z order.
  with open(out / "predictions.csv", newline="") as f:
    table = list(csv.DictReader(f))
  for series in {r["series_id"] for r in table}:
    z = [float(r["z_position"]) for r in table if r["series_id"] == series]
    assert len(z) > 1 and (np.diff(z) > 0).all()
  assert "| IVH | n/a |" in (out / "report.md").read_text()
  # A folder ich-jax did not write is left alone; an unknown set is named.
  (tmp_path / "theirs").mkdir()
  (tmp_path / "theirs" / "notes.txt").write_text("keep")
  capsys.readouterr()
  assert cli.main(["evaluate", "--model", str(runs["root"] / "cls_bundle"), "--dataset", "cq500/slices256:test",
                   "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "theirs")]) == 1
  assert "not written by ich-jax" in capsys.readouterr().err and (tmp_path / "theirs" / "notes.txt").exists()
  assert cli.main(["evaluate", "--model", str(runs["root"] / "cls_bundle"), "--dataset", "cq501:test",
                   "--out", str(tmp_path / "o2")]) == 1
  assert "dataset 'cq501' is not known" in capsys.readouterr().err
