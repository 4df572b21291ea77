"""The stage runner: skip what is finished, resume what is not, refuse what changed; epochs counted when a
stage starts."""
import json

import pytest

from ich_jax.experiments import runner, stage_configs, sweep
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


def test_a_nested_experiment_runs_only_with_the_registry_handed_down(tmp_path):
  # The runner knows no experiment by name (the registry imports it): a sweep entry that is an experiment needs
  # `run_experiment`, as ich_jax.experiments.run and the sweep pass it.
  from ml_collections import ConfigDict

  nested = Stage("entry", ConfigDict({"experiment": {"name": "x"}}))
  with pytest.raises(ValueError, match="'entry' is an experiment \\('x'\\): run it with run_experiment="):
    runner.run_stages([nested], tmp_path, compile_cache=False)
  ran = []
  runner.run_stages([nested], tmp_path, compile_cache=False,
                    run_experiment=lambda config, workdir, **kw: ran.append((config.experiment.name, workdir.name)))
  assert ran == [("x", "entry")]


def test_epochs_count_the_balanced_set_of_the_training_split(tiny_data_dir):
  from configs import strong_vs_weak
  from ich_jax.data import pipeline

  config = strong_vs_weak.get_config("smoke")
  config.dataset.data_dir = tiny_data_dir
  config.run.train.epochs = 3
  run = stage_configs.stage_config(config.run, config.dataset, 0, model=config.backbones.vgg19)
  assert run.model.name == "small_cnn" and tuple(run.model.options.widths) == (8, 8, 16)
  labels = pipeline.open_split(run.dataset, "train").metadata(("labels",))["labels"]
  balanced = 2 * int((labels[:, 0] > 0.5).sum())          # every lesion slice and as many normal ones
  resolved = runner.resolve_steps(run)
  assert resolved.train.steps_per_epoch == balanced // 8 and resolved.train.num_steps == 3 * (balanced // 8)
  run.train.steps_per_epoch = 7
  assert runner.resolve_steps(run).train.num_steps == run.train.num_steps  # set by hand: left alone


def test_a_stage_folder_holding_another_configs_run_is_refused_like_a_resumed_run(smoke_config, tmp_path):
  # A folder without stage.json (a run folder reused as a stage, or its stage.json deleted) whose config.json
  # records another learning rate: the stage does not train on under the new one, and the record stays.
  folder = tmp_path / "run"
  folder.mkdir()
  recorded = smoke_config.to_json_best_effort(indent=2)
  (folder / "config.json").write_text(recorded)
  changed = sweep.override(smoke_config, {"optimizer.learning_rate": 0.01})
  with pytest.raises(ValueError, match=r"(?s)run/config.json: this workdir was started with another config.*"
                                       r"\n  optimizer.learning_rate: 0.001 -> 0.01\n.*--allow_config_change"):
    runner.run_stages([Stage("run", changed, steps=("train",))], tmp_path)
  assert (folder / "config.json").read_text() == recorded
  assert not list(folder.glob("checkpoints/[0-9]*")) and not (folder / "metrics.jsonl").exists()
