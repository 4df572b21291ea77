"""The stage runner: skip what is finished, resume what is not, refuse what changed; sweeps and their table."""
import functools
import json

import numpy as np
import pytest

from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files, report
from ich_jax.experiments import runner
from ich_jax.experiments.runner import Stage


def _counting(log, name):
  def fn(workdir):
    log.append(name)
    (workdir / "out.txt").write_text(name)
  fn.__qualname__ = f"step_{name}"
  return fn


def _plan(log, a_params=None):
  return [Stage("a", fn=_counting(log, "a"), params=a_params or {"x": 1}),
          Stage("b/c", fn=_counting(log, "b/c"), after=("a",))]


def test_finished_stages_are_skipped_interrupted_ones_rerun_and_changed_ones_refused(tmp_path):
  log = []
  first = runner.run_stages(_plan(log), tmp_path)
  assert log == ["a", "b/c"] and (tmp_path / "b" / "c" / "out.txt").read_text() == "b/c"
  assert runner.read_marker(tmp_path / "a")["status"] == "done"
  assert runner.run_stages(_plan(log), tmp_path) == first and log == ["a", "b/c"]     # all skipped
  # An interrupted stage (marker still "running") runs again; the finished one before it does not.
  marker = runner.read_marker(tmp_path / "b" / "c")
  (tmp_path / "b" / "c" / "stage.json").write_text(json.dumps({**marker, "status": "running"}))
  runner.run_stages(_plan(log), tmp_path)
  assert log == ["a", "b/c", "b/c"]
  # Another configuration of a finished stage is refused, naming it, rather than mixed with the old results.
  # The stage reading it changes with it: both are named, and nothing runs.
  with pytest.raises(RuntimeError, match=r"2 stage\(s\) .*'a', 'b/c' .* Delete"):
    runner.run_stages(_plan(log, {"x": 2}), tmp_path)
  import shutil
  shutil.rmtree(tmp_path / "a")
  with pytest.raises(RuntimeError, match=r"1 stage\(s\) .*'b/c'"):
    runner.run_stages(_plan(log, {"x": 2}), tmp_path)
  assert log == ["a", "b/c", "b/c"]
  # `only` runs the named stages (or folder prefixes) and fingerprints the rest.
  shutil.rmtree(tmp_path / "b")
  runner.run_stages(_plan(log, {"x": 2}), tmp_path, only=["b/"])
  assert log[-1] == "b/c" and not (tmp_path / "a").exists()


def test_a_stage_marked_always_runs_every_time_and_is_never_stale(tmp_path):
  # A report that also reads outside the experiment: rerun on every invocation, whatever its parameters now.
  log = []
  plan = lambda x: _plan(log) + [Stage("report", fn=_counting(log, "report"), params={"x": x}, after=("b/c",),
                                       always=True)]
  runner.run_stages(plan(1), tmp_path)
  runner.run_stages(plan(2), tmp_path)
  assert log == ["a", "b/c", "report", "report"]
  assert runner.read_marker(tmp_path / "report")["status"] == "done"


def test_plans_that_cannot_be_right_are_errors(tmp_path):
  with pytest.raises(ValueError, match="do not come before it"):
    runner.run_stages([Stage("b", fn=print, after=("a",)), Stage("a", fn=print)], tmp_path)
  with pytest.raises(ValueError, match="names repeat"):
    runner.run_stages([Stage("a", fn=print), Stage("a", fn=print)], tmp_path)
  with pytest.raises(ValueError, match="not both or neither"):
    Stage("a")
  with pytest.raises(ValueError, match="unknown steps"):
    Stage("a", config={"x": 1}, steps=("train", "predict"))


def test_overrides_name_runs_and_unknown_fields_are_errors(smoke_config):
  stages = runner.sweep_stages(smoke_config, [{"seed": 3, "train.num_steps": 2}, {"name": "b", "data.image_size": 32}])
  assert [s.name for s in stages] == ["seed=3,num_steps=2", "b"]
  assert stages[0].config.seed == 3 and stages[0].config.train.num_steps == 2 and smoke_config.seed == 0
  assert stages[1].config.data.image_size == 32 and stages[1].params == {"overrides": {"data.image_size": 32}}
  with pytest.raises(KeyError, match="sweep entry 0 .*no field 'data.imagesize'"):
    runner.sweep_stages(smoke_config, [{"data.imagesize": 32}])
  with pytest.raises(KeyError, match="no field 'dta'"):
    runner.override(smoke_config, {"dta.image_size": 3})


def test_epochs_count_the_balanced_set_of_the_training_split(tiny_data_dir):
  from configs import strong_vs_weak
  from ich_jax.data import pipeline

  config = strong_vs_weak.get_config("smoke")
  config.dataset.data_dir = tiny_data_dir
  config.run.train.epochs = 3
  run = runner.stage_config(config.run, config.dataset, 0, model=config.backbones.vgg19)
  assert run.model.name == "small_cnn" and tuple(run.model.options.widths) == (8, 8, 16)
  labels = pipeline._metadata(pipeline.open_split(run.dataset, "train"), ("labels",))["labels"]
  balanced = 2 * int((labels[:, 0] > 0.5).sum())          # every lesion slice and as many normal ones
  resolved = runner.resolve_steps(run)
  assert resolved.train.steps_per_epoch == balanced // 8 and resolved.train.num_steps == 3 * (balanced // 8)
  run.train.steps_per_epoch = 7
  assert runner.resolve_steps(run).train.num_steps == run.train.num_steps  # set by hand: left alone


SWEEP = '''
def get_sweep(arg):
  # Same shapes (three channels of one slice): the second run reuses the first's compiled programs.
  recipes = {"rsna": [[0, 40, 80], [0, 80, 200], [0, 600, 2800]], "seed000": [[0, 40, 40], [0, 40, 80], [0, 500, 3000]]}
  return [{"name": n, "data.recipe": r} for n, r in recipes.items()][: int(arg) if arg else None]
'''


def test_a_sweep_trains_each_entry_once_and_collates_its_evaluations(smoke_config, tmp_path, capsys):
  sweep = tmp_path / "sweep.py"
  sweep.write_text(SWEEP)
  root = tmp_path / "runs"
  smoke_config.eval.n_boot = 20
  smoke_config.eval.figures = False
  smoke_config.eval.baseline = False
  rows = runner.run_sweep(smoke_config, f"{sweep}", root)
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
  runner.run_sweep(smoke_config, f"{sweep}:1", root)
  assert "rsna: done, skipped" in capsys.readouterr().out
  assert (root / "rsna" / "predictions.csv").stat().st_mtime_ns == mtime


def test_a_sweep_over_an_experiment_runs_it_per_entry_and_collates_its_final_stage(tmp_path, monkeypatch):
  """A stand-in experiment (one host step writing an evaluation) registered for the test."""
  import sys
  import types

  from ml_collections import ConfigDict

  from ich_jax import experiments
  from ich_jax.eval import report

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
  stages = runner.sweep_stages(base, [{"name": "small", "shift": 0.2}, {"name": "large", "shift": 0.9}])
  runner.run_stages(stages, tmp_path)
  rows = runner.collate(stages, tmp_path)
  assert (tmp_path / "large" / "final" / "predictions.csv").is_file()
  preds = prediction_files.read_predictions(tmp_path / "large" / "final" / "predictions.csv")
  _, scan = M.scan_scores(preds["probabilities"][:, 0], preds["study_id"])
  _, y = M.scan_scores(preds["labels"][:, 0], preds["study_id"])
  assert rows[1]["scan_auc_any"] == pytest.approx(M.roc_auc(y > 0.5, scan)) and rows[1]["delong_p"] is not None


def test_a_stage_folder_holding_another_configs_run_is_refused_like_a_resumed_run(smoke_config, tmp_path):
  # A folder without stage.json (a run folder reused as a stage, or its stage.json deleted) whose config.json
  # records another learning rate: the stage does not train on under the new one, and the record stays.
  folder = tmp_path / "run"
  folder.mkdir()
  recorded = smoke_config.to_json_best_effort(indent=2)
  (folder / "config.json").write_text(recorded)
  changed = runner.override(smoke_config, {"optimizer.learning_rate": 0.01})
  with pytest.raises(ValueError, match=r"(?s)run/config.json: this workdir was started with another config.*"
                                       r"\n  optimizer.learning_rate: 0.001 -> 0.01\n.*--allow_config_change"):
    runner.run_stages([Stage("run", changed, steps=("train",))], tmp_path)
  assert (folder / "config.json").read_text() == recorded
  assert not list(folder.glob("checkpoints/[0-9]*")) and not (folder / "metrics.jsonl").exists()
