"""Sweeps: entries named by their overrides, unknown fields refused, each entry run once, one table over their
evaluations (a sweep over an experiment collates its final stage)."""
import functools
import json

import numpy as np
import pytest

from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files
from ich_jax.experiments import sweep
from ich_jax.experiments.runner import Stage


def test_overrides_name_runs_and_unknown_fields_are_errors(smoke_config):
  stages = sweep.sweep_stages(smoke_config, [{"seed": 3, "train.num_steps": 2}, {"name": "b", "data.image_size": 32}])
  assert [s.name for s in stages] == ["seed=3,num_steps=2", "b"]
  assert stages[0].config.seed == 3 and stages[0].config.train.num_steps == 2 and smoke_config.seed == 0
  assert stages[1].config.data.image_size == 32 and stages[1].params == {"overrides": {"data.image_size": 32}}
  with pytest.raises(KeyError, match="sweep entry 0 .*no field 'data.imagesize'"):
    sweep.sweep_stages(smoke_config, [{"data.imagesize": 32}])
  with pytest.raises(KeyError, match="no field 'dta'"):
    sweep.override(smoke_config, {"dta.image_size": 3})


SWEEP = '''
def get_sweep(arg):
  # Same shapes (three channels of one slice): the second run reuses the first's compiled programs.
  recipes = {"rsna": [[0, 40, 80], [0, 80, 200], [0, 600, 2800]], "seed000": [[0, 40, 40], [0, 40, 80], [0, 500, 3000]]}
  return [{"name": n, "data.recipe": r} for n, r in recipes.items()][: int(arg) if arg else None]
'''


def test_a_sweep_trains_each_entry_once_and_collates_its_evaluations(smoke_config, tmp_path, capsys):
  sweep_file = tmp_path / "sweep.py"
  sweep_file.write_text(SWEEP)
  root = tmp_path / "runs"
  smoke_config.eval.n_boot = 20
  smoke_config.eval.figures = False
  smoke_config.eval.baseline = False
  rows = sweep.run_sweep(smoke_config, f"{sweep_file}", root)
  assert [r["name"] for r in rows] == ["rsna", "seed000"]
  run = json.loads((root / "seed000" / "config.json").read_text())
  assert run["data"]["recipe"] == [[0, 40, 40], [0, 40, 80], [0, 500, 3000]]
  table = (root / "sweep.md").read_text()
  # The table's numbers are the runs' own: recompute the second row from its predictions.csv.
  preds = {n: prediction_files.read_predictions(root / n / "predictions.csv") for n in ("rsna", "seed000")}
  ids, scan = zip(*(M.scan_scores(preds[n]["probabilities"][:, 0], preds[n]["study_id"]) for n in ("rsna", "seed000")))
  _, y = M.scan_scores(preds["rsna"]["labels"][:, 0], preds["rsna"]["study_id"])
  auc = M.roc_auc(y > 0.5, scan[1])
  assert rows[1]["scan_auc_any"] == pytest.approx(auc)
  test = M.delong_test(y > 0.5, scan[1], scan[0])
  assert rows[1]["delong_p"] == pytest.approx(test["p_value"]) and rows[0]["delong_p"] is None
  assert f"{auc:.3f} [" in table.split("| seed000 |")[1].splitlines()[0]
  assert M.weighted_log_loss(preds["seed000"]["labels"], preds["seed000"]["probabilities"]) == pytest.approx(
      rows[1]["slice_log_loss"])
  # A rerun trains nothing; a longer sweep runs only its new entry.
  capsys.readouterr()
  mtime = (root / "rsna" / "predictions.csv").stat().st_mtime_ns
  sweep.run_sweep(smoke_config, f"{sweep_file}:1", root)
  assert "rsna: done, skipped" in capsys.readouterr().out
  assert (root / "rsna" / "predictions.csv").stat().st_mtime_ns == mtime


def test_a_sweep_over_an_experiment_runs_it_per_entry_and_collates_its_final_stage(tmp_path, monkeypatch):
  """A stand-in experiment (one host step writing an evaluation) registered for the test."""
  import sys
  import types

  from ml_collections import ConfigDict

  from ich_jax import experiments
  from ich_jax.eval import report
  from ich_jax.experiments import runner

  def write(workdir, *, shift):
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 6), np.float32)
    labels[:20, 0] = 1            # studies s0 … s9 with blood
    prob = np.clip(0.5 * labels + shift * rng.random((40, 6)), 0, 1)
    preds = {"probabilities": prob, "labels": labels, "study_id": np.array([f"s{i // 2}" for i in range(40)]),
             "series_id": np.array([f"s{i // 2}" for i in range(40)]), "slice_index": np.arange(40) % 2}
    report.write_evaluation(preds, workdir, ConfigDict({"threshold": 0.5, "n_boot": 10, "figures": False}),
                            title="fake", quiet=True)

  fake = types.ModuleType("fake_experiment")
  fake.FINAL = "final"
  fake.stages = lambda config, root: [Stage("final", fn=functools.partial(write, shift=config.shift),
                                            params={"shift": config.shift})]
  monkeypatch.setitem(sys.modules, "fake_experiment", fake)
  monkeypatch.setitem(experiments.EXPERIMENTS, "fake", "fake_experiment")
  base = ConfigDict({"experiment": {"name": "fake"}, "shift": 0.2})
  stages = sweep.sweep_stages(base, [{"name": "small", "shift": 0.2}, {"name": "large", "shift": 0.9}])
  runner.run_stages(stages, tmp_path, run_experiment=experiments.run)
  rows = sweep.collate(stages, tmp_path)
  assert (tmp_path / "large" / "final" / "predictions.csv").is_file()
  preds = prediction_files.read_predictions(tmp_path / "large" / "final" / "predictions.csv")
  _, scan = M.scan_scores(preds["probabilities"][:, 0], preds["study_id"])
  _, y = M.scan_scores(preds["labels"][:, 0], preds["study_id"])
  assert rows[1]["scan_auc_any"] == pytest.approx(M.roc_auc(y > 0.5, scan)) and rows[1]["delong_p"] is not None
