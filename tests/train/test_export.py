"""`ich_jax.train.export.export_features`: which splits it exports, what it asks the loop for, and the folders and
provenance it writes. The loop's restore and prediction stand in as hand-made rows, so nothing trains or
compiles (real exports: tests/train/test_sequence.py, tests/train/test_ensemble.py; the format:
tests/data/test_stage_exports.py)."""
import json
import types

import numpy as np
import pytest
from ml_collections import ConfigDict

from ich_jax.data import stage_exports
from ich_jax.train import export, loop


def _config(**extra) -> ConfigDict:
  return ConfigDict({"task": {"name": "multilabel_classification"}, "model": {"name": "small_cnn"},
                     "dataset": {"name": "synthetic_ich", "config": "tiny", "train_split": "train",
                                 "eval_split": "test"},
                     "eval": {"batch_size": 4}, "train": {"keep_checkpoints": 1}, **extra})


def _rows(split: str) -> dict:
  """Three slices of one series, out of order; a probability per split, so each folder says whose rows it holds."""
  n = {"train": 0.1, "test": 0.2, "validation": 0.3}[split]
  return {"series_id": np.array([b"1.2.3"] * 3), "study_id": np.array([b"st"] * 3),
          "slice_index": np.array([2, 0, 1]), "z_position": np.array([10.0, 0.0, 5.0]),
          "labels": np.zeros((3, 6)), "probabilities": np.full((3, 6), n), "features": np.ones((3, 4)),
          "record_index": np.array([2, 0, 1])}


@pytest.fixture
def fake_loop(monkeypatch):
  calls = {"open": [], "predict": [], "restore": []}
  monkeypatch.setattr(loop, "input_module", lambda config: types.SimpleNamespace(
      open_split=lambda dataset, split: calls["open"].append(split) or split))

  def predict_split(exp, state, source, *, batch_size, method, fields):
    calls["predict"].append((source, batch_size, method, fields))
    return _rows(source)

  monkeypatch.setattr(loop, "predict_split", predict_split)

  def restore_for_eval(config, workdir, step):
    calls["restore"].append(step)
    return types.SimpleNamespace(task=types.SimpleNamespace(export=True)), {}, 11

  monkeypatch.setattr(loop, "restore_for_eval", restore_for_eval)
  return calls


def test_the_train_and_eval_splits_are_exported_with_their_source(tmp_path, fake_loop):
  written = export.export_features(_config(), tmp_path)
  assert written == [tmp_path / "export" / "train", tmp_path / "export" / "test"]
  assert fake_loop["restore"] == [None]                        # the newest checkpoint
  assert [c[1:3] for c in fake_loop["predict"]] == [(4, "export")] * 2
  assert fake_loop["predict"][0][3] == stage_exports.ID_FIELDS + stage_exports.EXTRA_FIELDS
  for directory, prob in zip(written, (0.1, 0.2)):
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["source"] == {"workdir": str(tmp_path.absolute()), "step": 11, "model": "small_cnn",
                              "task": "multilabel_classification", "dataset": "synthetic_ich/tiny"}
    assert (meta["split"], meta["num_series"], meta["num_slices"], meta["feature_dim"]) == (directory.name, 1, 3, 4)
    rows = stage_exports.read_export(directory)
    np.testing.assert_allclose(rows["probabilities"], prob)
    np.testing.assert_array_equal(rows["slice_index"], [0, 1, 2])     # sorted by z within the series


def test_configured_splits_once_each_and_a_given_state_is_not_restored(tmp_path, fake_loop):
  config = _config(export={"splits": ("validation", "test", "validation")})
  exp = types.SimpleNamespace(task=types.SimpleNamespace(export=True))
  written = export.export_features(config, tmp_path, exp=exp, state={}, step=4)
  assert [d.name for d in written] == ["validation", "test"] and fake_loop["open"] == ["validation", "test"]
  assert fake_loop["restore"] == []
  assert json.loads((written[0] / "meta.json").read_text())["source"]["step"] == 4


def test_a_task_without_export_is_named(tmp_path, fake_loop):
  exp = types.SimpleNamespace(task=types.SimpleNamespace())
  with pytest.raises(ValueError, match="config task.name='multilabel_classification' has no export"):
    export.export_features(_config(), tmp_path, exp=exp, state={}, step=1)
  assert not (tmp_path / "export").exists()
