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
def cascade(tiny_data_dir, cq500_fixture, tmp_path_factory):
  """The smoke cascade, also scored on an external set: a CQ500 build of the qure.ai-layout fixture."""
  return run_smoke(cascade_config, tiny_data_dir, tmp_path_factory.mktemp("cascade"),
                   {"experiment.external": "cq500/slices256:test",
                    "experiment.external_manual_dir.cq500": str(cq500_fixture.root)})


def _preds(path):
  return prediction_files.read_predictions(path / "predictions.csv")


def test_every_stage_ran_and_a_rerun_skips_them_all(cascade, capsys):
  config, root = cascade
  stages = experiments.stages(config, root)
  assert len(stages) == 3 * (2 + 1 + 2 * (2 + 1)) + 3 and stages[-1].name == "external"
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


def test_the_external_set_runs_through_every_stage_and_table_4_gets_its_column(cascade):
  """Seed 003 Table 4: the cascade on CQ500. Each stage reads its upstream stages' export of the set."""
  config, root = cascade
  key = "cq500.test"
  b = root / BACKBONES[0]
  read = lambda d: stage_exports.read_export(stage_exports.export_dir(d, key))  # noqa: E731
  for stage in ("cnn", "seq1", "seq2"):
    parts = [read(b / f"{stage}_fold{k}") for k in range(2)]
    assert not np.allclose(parts[0]["probabilities"], parts[1]["probabilities"])
    np.testing.assert_allclose(read(b / stage)["probabilities"],
                               (parts[0]["probabilities"] + parts[1]["probabilities"]) / 2, rtol=1e-6)
  seq1 = json.loads((b / "seq1_fold0" / "config.json").read_text())
  assert [e["name"] for e in seq1["export"]["external"]] == ["cq500"]
  ens = read(root / "ensemble")
  np.testing.assert_allclose(ens["probabilities"], np.mean([read(root / x / "seq2")["probabilities"]
                                                            for x in BACKBONES], 0), rtol=1e-6)
  t = json.loads((root / "external" / "metrics.json").read_text())
  r = t["results"][key]["Model_ensemble"]
  ids, p = M.scan_scores(ens["probabilities"], ens["study_id"])
  _, y = M.scan_scores(ens["labels"], ens["study_id"])
  assert len(ids) == 2 and r["scan"]["any"]["auc"] == pytest.approx(M.roc_auc(y[:, 0] > 0.5, p[:, 0]))
  assert r["slice"] is None and t["table_model"] == "Model_ensemble"
  text = (root / "external" / "report.md").read_text()
  scan = text.split("## Table 4, scan level")[1].split("## ")[0]
  assert "| IVH | n/a |" in scan and "cq500/slices256:test AUC [95% CI]" in scan   # no IVH in the fixture


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


def _test_study(config, series_id):
  """The smoke dataset's test-split slices of `series_id` (TFDS records), in z order."""
  from ich_jax.data import pipeline

  source = pipeline.open_split(config.dataset, config.dataset.eval_split)
  records = [source[i] for i in range(len(source))]
  return sorted((r for r in records if r["series_id"].decode() == series_id), key=lambda r: float(r["z_position"]))


def test_the_k_fold_cascade_is_one_bundle_that_predicts_a_dicom_study_as_the_ensemble_export(cascade, tmp_path):
  """Exported from the root's experiment config (what `launch.py --mode export` passes), the bundle is per
  backbone the 2 fold CNNs → their mean → 2 seq_gru_1 → mean → 2 seq_gru_2 → mean, then the mean over backbones;
  on a test study written as DICOM its per-slice probabilities are the ensemble stage's own export of that study."""
  import csv

  from ich_jax import bundle as bundle_lib
  from ich_jax import predict
  from ich_jax.bundle import export
  from ich_jax.bundle.__main__ import main as bundle_main
  from ich_jax.data import dicom
  from ich_jax.eval.prediction_files import PROB_COLUMNS

  config, root = cascade
  cascade_bundle = bundle_lib.load(export.export_bundle(config, root, tmp_path / "bundle"))
  members = [(m["name"], m["role"], m["inputs"]) for m in cascade_bundle.describe()]
  b = BACKBONES[0]
  assert members[:9] == [
      (f"{b}.cnn_fold0", "classifier", []), (f"{b}.cnn_fold1", "classifier", []),
      (f"{b}.cnn", "mean", [f"{b}.cnn_fold0", f"{b}.cnn_fold1"]),
      (f"{b}.seq1_fold0", "sequence", [f"{b}.cnn"]), (f"{b}.seq1_fold1", "sequence", [f"{b}.cnn"]),
      (f"{b}.seq1", "mean", [f"{b}.seq1_fold0", f"{b}.seq1_fold1"]),
      (f"{b}.seq2_fold0", "sequence", [f"{b}.cnn", f"{b}.seq1"]),
      (f"{b}.seq2_fold1", "sequence", [f"{b}.cnn", f"{b}.seq1"]),
      (f"{b}.seq2", "mean", [f"{b}.seq2_fold0", f"{b}.seq2_fold1"])]
  assert len(members) == 3 * 9 + 1 and members[-1] == ("ensemble", "mean", [f"{b}.seq2" for b in BACKBONES])
  assert cascade_bundle.outputs["probabilities"]["members"] == ["ensemble"]
  assert cascade_bundle.manifest["version"] == 2 and cascade_bundle.threshold == config.eval.threshold

  # One test study as a scanner writes it, through predict: the ensemble's export of that study, slice by slice.
  ens = stage_exports.read_export(stage_exports.export_dir(root / "ensemble", "test"))
  series = str(ens["series_id"][0])
  rows = np.flatnonzero(ens["series_id"] == series)
  records = _test_study(config, series)
  hu = np.stack([r["image"] for r in records])
  z = np.array([r["z_position"] for r in records])
  spacing = (float(records[0]["slice_thickness"]), *map(float, records[0]["pixel_spacing"]))
  dicom.write_series(hu, spacing, tmp_path / "study", z_positions=z)
  predict.predict_study(cascade_bundle, tmp_path / "study", tmp_path / "pred",
                        predict.Options(batch_size=8, progress=False))
  with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
    got = np.array([[float(r[c]) for c in PROB_COLUMNS] for r in csv.DictReader(f)])
  np.testing.assert_allclose(got, ens["probabilities"][rows], rtol=1e-5, atol=1e-6)

  # The stages between: a backbone's fold-mean CNN features and its seq_gru_1 mean are its stages' exports; a fold
  # model alone and one backbone alone differ from them (so the means above are not vacuous).
  out = cascade_bundle.predict(cascade_bundle.preprocess(records), z, batch_size=8)["members"]
  for name, stage, key in (("cnn", "cnn", "features"), ("seq1", "seq1", "probabilities")):
    mine = stage_exports.read_export(stage_exports.export_dir(root / b / stage, "test"))
    np.testing.assert_allclose(out[f"{b}.{name}"][key], mine[key][rows], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[f"{b}.{name}_fold0"][key], mine[key][rows], atol=1e-4)
  assert not np.allclose(out[f"{b}.seq2"]["probabilities"], ens["probabilities"][rows], atol=1e-4)

  # `python -m ich_jax.bundle export --run W/B/seq1`: a combined stage by its combined.json, its fold runs with it.
  assert bundle_main(["export", "--run", str(root / b / "seq1"), "--out", str(tmp_path / "seq1")]) == 0
  seq1 = bundle_lib.load(tmp_path / "seq1")
  assert [m["name"] for m in seq1.describe()] == ["cnn_fold0", "cnn_fold1", "cnn", "seq1_fold0", "seq1_fold1", "seq1"]
  np.testing.assert_allclose(seq1.predict(seq1.preprocess(records), z, batch_size=8)["probabilities"],
                             out[f"{b}.seq1"]["probabilities"], rtol=1e-6)
  # combine renames a mean member and its inputs alike, and the combined bundle predicts the same.
  again = bundle_lib.load(bundle_lib.combine(tmp_path / "combined", average=[tmp_path / "seq1"]))
  assert again.members["0.seq1"].entry["inputs"] == ["0.seq1_fold0", "0.seq1_fold1"]
  np.testing.assert_allclose(again.predict(again.preprocess(records), z, batch_size=8)["probabilities"],
                             out[f"{b}.seq1"]["probabilities"], rtol=1e-6)
