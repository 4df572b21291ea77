"""Seed 002's threshold baseline as a stage: thresholds searched on the training split, the held-out split's
predictions and evaluation written like any run's."""
import json

import numpy as np

from configs import physionet_patch_unet
from ich_jax import experiments
from ich_jax.eval import prediction_files
from ich_jax.experiments import threshold_baseline


def test_the_stage_writes_the_chosen_thresholds_and_an_evaluation_of_all_or_nothing_slices(tiny_data_dir, tmp_path):
  p = physionet_patch_unet.get_config("smoke")
  p.dataset.data_dir = tiny_data_dir
  config = experiments.stages(p, tmp_path)[0].params["config"]      # fold0/threshold
  metrics = threshold_baseline.run_stage(tmp_path / "threshold", config=config)
  chosen = json.loads((tmp_path / "threshold" / "thresholds.json").read_text())
  assert 100 <= chosen["lower"] <= 210 <= chosen["upper"] <= 255 and chosen["n_train_slices_with_blood"] > 0
  assert metrics["threshold_baseline"]["lower"] == chosen["lower"] and metrics["split"] == config.dataset.eval_split
  preds = prediction_files.read_predictions(tmp_path / "threshold" / "predictions.npz")
  blood = preds["pred_mask"].reshape(len(preds["pred_mask"]), -1).any(1)
  np.testing.assert_array_equal(preds["probabilities"], np.repeat(blood[:, None], 6, axis=1).astype(np.float32))


def test_the_stage_builds_its_dataset_when_it_runs_first(tmp_path, monkeypatch):
  """The first stage of seed 002's rounds on a fresh data_dir (a real download's first run): built, then read."""
  from ich_jax.data import datasets

  monkeypatch.setenv("ICH_JAX_BUILD_WORKERS", "1")
  p = physionet_patch_unet.get_config("smoke")
  p.dataset.data_dir = str(tmp_path / "tfds")
  config = experiments.stages(p, tmp_path)[0].params["config"]      # fold0/threshold
  assert not datasets.builder(config.dataset).is_prepared()
  metrics = threshold_baseline.run_stage(tmp_path / "threshold", config=config)
  assert datasets.builder(config.dataset).is_prepared()
  held_out = datasets.open_split(config.dataset, config.dataset.eval_split)
  assert len(prediction_files.read_predictions(tmp_path / "threshold" / "predictions.npz")["study_id"]) == len(
      held_out) > 0 and metrics["split"] == config.dataset.eval_split
