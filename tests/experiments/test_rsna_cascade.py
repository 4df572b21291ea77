"""Seed 003's cascade, smoke variant, end to end: stages, stacking, ensemble and the report's tables."""
import json

import numpy as np
import pytest

from configs import rsna_cascade as cascade_config
from ich_jax import LABELS, experiments
from ich_jax.data import folds, stage_exports
from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files
from ich_jax.eval.formatting import MISSING
from tests.experiments.conftest import run_smoke

BACKBONES = ("se_resnext101_32x4d", "densenet169", "densenet121")


@pytest.fixture(scope="module")
def cascade(tiny_data_dir, tmp_path_factory):
  return run_smoke(cascade_config, tiny_data_dir, tmp_path_factory.mktemp("cascade"))


def _preds(path):
  return prediction_files.read_predictions(path / "predictions.csv")


def test_every_stage_ran_and_a_rerun_skips_them_all(cascade, capsys):
  config, root = cascade
  stages = experiments.stages(config, root)
  assert len(stages) == 3 * (2 + 1 + 2 * (2 + 1)) + 2
  assert all(json.loads((root / s.name / "stage.json").read_text())["status"] == "done" for s in stages)
  capsys.readouterr()
  experiments.run(config, root)
  out = capsys.readouterr().out
  assert out.count("done, skipped") == len(stages) and "running" not in out


def test_training_exports_are_out_of_fold_and_test_exports_the_fold_mean(cascade):
  config, root = cascade
  b = root / BACKBONES[1]
  oof = stage_exports.read_export(stage_exports.export_dir(b / "cnn", "train"))
  study_fold = dict(zip(oof["study_id"], folds.study_folds(oof["study_id"], 2)))
  for k in range(2):
    fold = stage_exports.read_export(stage_exports.export_dir(b / f"cnn_fold{k}", f"train[fold={k}/2]"))
    # Fold k's export holds exactly fold k's studies, and the assembled export took those slices from it.
    assert {study_fold[s] for s in fold["study_id"]} == {k}
    mine = np.flatnonzero([study_fold[s] == k for s in oof["study_id"]])
    np.testing.assert_array_equal(oof["series_id"][mine], fold["series_id"])
    np.testing.assert_array_equal(oof["probabilities"][mine], fold["probabilities"])
    np.testing.assert_array_equal(oof["features"][mine], fold["features"])
  test = [stage_exports.read_export(stage_exports.export_dir(b / f"cnn_fold{k}", "test")) for k in range(2)]
  mean = stage_exports.read_export(stage_exports.export_dir(b / "cnn", "test"))
  np.testing.assert_allclose(mean["probabilities"], (test[0]["probabilities"] + test[1]["probabilities"]) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(mean["features"], (test[0]["features"] + test[1]["features"]) / 2, rtol=1e-5)
  # The two fold models differ (else the mean would hide nothing).
  assert not np.allclose(test[0]["probabilities"], test[1]["probabilities"])
  # Sequence model 2 read the CNN's and model 1's out-of-fold predictions.
  seq2 = json.loads((b / "seq2_fold0" / "config.json").read_text())
  assert seq2["dataset"]["exports"] == [str(b / "cnn"), str(b / "seq1")]
  assert seq2["dataset"]["train_split"] == "train[fold!=0/2]" and seq2["model"]["name"] == "seq_gru_2"


def test_the_ensemble_is_the_mean_of_the_backbones_last_stage(cascade):
  _, root = cascade
  finals = [_preds(root / b / "seq2") for b in BACKBONES]
  ens = _preds(root / "ensemble")
  for p in finals:
    np.testing.assert_array_equal(p["series_id"], ens["series_id"])
  np.testing.assert_allclose(ens["probabilities"], np.mean([p["probabilities"] for p in finals], 0), rtol=1e-6)


def test_the_report_tables_are_complete_and_computed_from_the_stages_predictions(cascade):
  config, root = cascade
  text = (root / "report.md").read_text()
  summary = json.loads((root / "metrics.json").read_text())
  for level in ("slice", "scan"):
    section = text.split(f"## Table 3, {level} level")[1].split("## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "Backbone" not in line]
    assert len(table) == 3 * 3 + 1 and table[-1].startswith("| all | Model_ensemble |")
    for line in table:
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert len(cells) == 6 and all(c and c != MISSING for c in cells), line
  rows = summary["table3"]["scan"]
  assert [r["row"] for r in rows[:3]] == ["2D-CNN", "2D-CNN + Seq_model 1", "2D-CNN + Seq_model 1 + Seq_model 2"]
  # Recompute two cells from the stages' predictions.csv.
  ens = _preds(root / "ensemble")
  _, scan_p = M.scan_scores(ens["probabilities"], ens["study_id"])
  _, scan_y = M.scan_scores(ens["labels"], ens["study_id"])
  assert rows[-1]["auc_any"] == pytest.approx(M.roc_auc(scan_y[:, 0] > 0.5, scan_p[:, 0]))
  assert f"{rows[-1]['auc_any']:.3f} [" in text.split("## Table 3, scan level")[1].split("Model_ensemble")[1]
  seq1 = _preds(root / BACKBONES[2] / "seq1")
  slice_row = summary["table3"]["slice"][7]
  assert slice_row["backbone"] == BACKBONES[2] and slice_row["row"] == "2D-CNN + Seq_model 1"
  assert slice_row["weighted_log_loss"] == pytest.approx(M.weighted_log_loss(seq1["labels"], seq1["probabilities"]))
  # Table 4: every class of the ensemble; an AUC where the test split has positives and negatives.
  table4 = summary["table4"]["scan"]
  assert list(table4) == list(LABELS)
  present = scan_y.any(0) & ~scan_y.all(0)
  for c, name in enumerate(LABELS):
    got = table4[name]["auc"]
    assert (got is not None) == bool(present[c])
    if present[c]:
      assert got == pytest.approx(M.roc_auc(scan_y[:, c] > 0.5, scan_p[:, c]))
