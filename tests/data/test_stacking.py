"""Combining stage exports: the out-of-fold training export and the mean over models (seed 003's stacking)."""
import numpy as np
import pytest

from ich_jax.data import folds, stacking, stage_exports


def _rows(studies, *, prob, slices=3):
  """Rows of series `s{k}` (study `study{k}`) for each k; probabilities and features name the slice and the model."""
  rows = {k: [] for k in ("series_id", "study_id", "slice_index", "z_position", "labels", "probabilities",
                          "features", "record_index")}
  for k in studies:
    for s in range(slices):
      rows["series_id"].append(f"s{k}")
      rows["study_id"].append(f"study{k}")
      rows["slice_index"].append(s)
      rows["z_position"].append(5.0 * s)
      rows["labels"].append(np.eye(6, dtype=np.float32)[(k + s) % 6])
      rows["probabilities"].append(np.full(6, prob + 0.01 * s, np.float32))
      rows["features"].append(np.array([k, s, prob], np.float32))
      rows["record_index"].append(100 + len(rows["record_index"]))
  return {k: np.asarray(v) for k, v in rows.items()}


def _fold_exports(tmp_path, n=3, studies=range(7)):
  """Fold k's export holds the studies of fold k of `train`, scored by "model k" (probability 0.1·k)."""
  fold_of = folds.study_folds([f"study{k}" for k in studies], n)
  dirs = []
  for k in range(n):
    mine = [s for s, f in zip(studies, fold_of) if f == k]
    d = stage_exports.export_dir(tmp_path / f"fold{k}", f"train[fold={k}/{n}]")
    stage_exports.write_export(d, _rows(mine, prob=0.1 * k), {"split": f"train[fold={k}/{n}]"})
    dirs.append(d)
  return dirs, fold_of


def test_out_of_fold_takes_each_fold_from_its_model_and_reads_back_by_folds(tmp_path):
  dirs, fold_of = _fold_exports(tmp_path)
  out = stacking.out_of_fold(dirs, stage_exports.export_dir(tmp_path / "oof", "train"))
  assert stage_exports.read_meta(out)["split"] == "train" and stage_exports.read_meta(out)["combined"] == "out_of_fold"
  rows = stage_exports.read_export(out)
  assert sorted(set(rows["series_id"])) == [f"s{k}" for k in range(7)] and len(rows["series_id"]) == 21
  assert "record_index" not in rows  # it numbered each fold run's own source
  for sid, prob, feat in zip(rows["series_id"], rows["probabilities"], rows["features"]):
    k = int(sid[1:])
    assert prob[0] == pytest.approx(0.1 * fold_of[k] + 0.01 * feat[1]) and feat[0] == k
  # The training split's folds, as a sequence stage reads them, are the exporting models' folds.
  for k in range(3):
    held_out = stage_exports.SeriesFeatureSource([tmp_path / "oof"], f"train[fold={k}/3]")
    assert sorted(held_out.series_id) == sorted(f"s{s}" for s in range(7) if fold_of[s] == k)
    assert all(held_out[i]["predictions"][0, 0, 0] == pytest.approx(0.1 * k) for i in range(len(held_out)))


def test_out_of_fold_refuses_missing_repeated_or_overlapping_folds(tmp_path):
  dirs, _ = _fold_exports(tmp_path)
  with pytest.raises(ValueError, match="k = 0 … K-1, each once"):
    stacking.out_of_fold(dirs[:2], tmp_path / "x")
  with pytest.raises(ValueError, match="k = 0 … K-1, each once"):
    stacking.out_of_fold([dirs[0], dirs[0], dirs[2]], tmp_path / "x")
  clash = stage_exports.export_dir(tmp_path / "clash", "train[fold=1/3]")
  stage_exports.write_export(clash, _rows([0, 1, 2, 3, 4, 5, 6], prob=0.5), {"split": "train[fold=1/3]"})
  with pytest.raises(ValueError, match="is in two fold exports"):
    stacking.out_of_fold([dirs[0], clash, dirs[2]], tmp_path / "x")
  no_features = stage_exports.export_dir(tmp_path / "nf", "train[fold=1/3]")
  stage_exports.write_export(no_features,
                             {k: v for k, v in stage_exports.read_export(dirs[1]).items() if k != "features"},
                             {"split": "train[fold=1/3]"})
  with pytest.raises(ValueError, match="have features and"):
    stacking.out_of_fold([dirs[0], no_features, dirs[2]], tmp_path / "x")


def test_mean_over_models_averages_outputs_of_the_same_slices(tmp_path):
  dirs = []
  for m, prob in enumerate((0.2, 0.4, 0.9)):
    d = stage_exports.export_dir(tmp_path / f"model{m}", "test")
    rows = _rows(range(4), prob=prob)
    rows["features"] = rows["features"] * (m + 1)
    stage_exports.write_export(d, rows, {"split": "test"})
    dirs.append(d)
  out = stage_exports.read_export(stacking.mean_over_models(dirs, tmp_path / "mean"))
  parts = [stage_exports.read_export(d) for d in dirs]
  np.testing.assert_allclose(out["probabilities"], np.mean([p["probabilities"] for p in parts], 0), rtol=1e-6)
  np.testing.assert_allclose(out["features"][:, :2], 2 * parts[0]["features"][:, :2], rtol=1e-6)  # (1 + 2 + 3) / 3
  np.testing.assert_array_equal(out["labels"], parts[0]["labels"])
  other = stage_exports.export_dir(tmp_path / "other", "test")
  stage_exports.write_export(other, _rows(range(1, 5), prob=0.3), {"split": "test"})
  with pytest.raises(ValueError, match="differ in series_id"):
    stacking.mean_over_models([dirs[0], other], tmp_path / "bad")
