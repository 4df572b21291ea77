"""The shared trainer on 8 virtual devices: one step, resume after a crash, end to end through launch.py."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ich_jax.train import loop, tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_unknown_names_are_clear_errors(smoke_config):
  from ich_jax import models

  with pytest.raises(KeyError, match="model.name='resnet9000'"):
    models.build("resnet9000", num_classes=6, in_channels=3, rngs=nnx.Rngs(0))
  cfg = smoke_config.copy_and_resolve_references()
  cfg.task.name = "nope"
  with pytest.raises(KeyError, match="task.name='nope'"):
    loop.make_experiment(cfg)


def test_train_step_8_devices_matches_single_device(smoke_config):
  assert jax.device_count() == 8
  exp = loop.make_experiment(smoke_config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((8, 64, 64, 3), np.float32),
           "labels": rng.integers(0, 2, (8, 6)).astype(np.float32),
           "mask": (rng.random((8, 64, 64)) > 0.97).astype(np.uint8)}
  state = exp.init_state()
  before = _leaves(state["params"])
  step_fn = loop.make_train_step(exp)
  from ich_jax.train import sharding
  assert exp.task.batch_keys == ("image", "labels", "mask")  # the smoke config trains with strong labels
  sharded = sharding.put_batch(batch, sharding.batch_sharding(exp.mesh), exp.task.batch_keys)
  assert len(sharded["image"].sharding.device_set) == 8
  new_state, metrics = step_fn(state, sharded)
  assert int(new_state["step"]) == 1 and np.isfinite(float(metrics["loss"]))
  assert float(metrics["mask_loss"]) > 0
  after = _leaves(new_state["params"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # The same step on one device, no sharding: data parallelism must not change the maths.
  one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  exp1 = loop.Experiment(**{**exp.__dict__, "mesh": one})
  state1, metrics1 = loop.make_train_step(exp1)(exp1.init_state(), batch)
  assert float(metrics1["loss"]) == pytest.approx(float(metrics["loss"]), rel=1e-5)
  for a, b in zip(_leaves(state1["params"]), after):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_on_device_finish_trains_like_the_host_pipeline(smoke_config):
  # config.data.preprocess_on = "device": the batch arrives as int16 HU + maps, sharded over 8
  # devices, and the jitted step warps and windows it. Its loss must be the
  # task's loss on the host-made batch of the same stream position.
  from ich_jax.data import pipeline
  from ich_jax.train import sharding
  source = pipeline.open_split(smoke_config.dataset, smoke_config.dataset.train_split)
  host = next(pipeline.train_iterator(source, smoke_config.data, global_batch_size=8, seed=smoke_config.seed))
  cfg = smoke_config.copy_and_resolve_references()
  cfg.data.preprocess_on = "device"
  exp = loop.make_experiment(cfg)
  assert exp.train_keys == ("hu", "warp", "labels", "mask")
  batch = next(pipeline.train_iterator(source, cfg.data, global_batch_size=8, seed=cfg.seed))
  state = exp.init_state()
  model = nnx.merge(exp.graphdef_train, state["params"], state["model_state"])
  host_loss, host_metrics = exp.task.loss(model, {k: host[k] for k in exp.task.batch_keys})
  placed = sharding.put_batch(batch, sharding.batch_sharding(exp.mesh), exp.train_keys)
  assert len(placed["hu"].sharding.device_set) == 8
  new_state, metrics = loop.make_train_step(exp)(state, placed)
  assert float(metrics["loss"]) == pytest.approx(float(host_loss), rel=1e-4)
  assert float(metrics["mask_loss"]) == pytest.approx(float(host_metrics["mask_loss"]), rel=1e-4)
  assert int(new_state["step"]) == 1


class _Crash(Exception):
  pass


def test_crash_and_resume_equals_uninterrupted(smoke_config, tmp_path, monkeypatch):
  cfg = smoke_config
  _, full = loop.train(cfg, tmp_path / "full")

  real_put_batch = loop.sharding.put_batch
  calls = []

  def crashing_put_batch(*args, **kwargs):
    # Die while assembling step 5's batch: after the step-3 checkpoint, before the next one.
    calls.append(1)
    if len(calls) == 5:
      raise _Crash()
    return real_put_batch(*args, **kwargs)

  monkeypatch.setattr(loop.sharding, "put_batch", crashing_put_batch)
  with pytest.raises(_Crash):
    loop.train(cfg, tmp_path / "resumed")
  assert (tmp_path / "resumed" / "checkpoints" / "3").is_dir()
  assert not (tmp_path / "resumed" / "checkpoints" / "6").exists()
  monkeypatch.setattr(loop.sharding, "put_batch", real_put_batch)
  _, resumed = loop.train(cfg, tmp_path / "resumed")
  assert int(resumed["step"]) == cfg.train.num_steps
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def _launch(*args, env_extra=None, timeout=600):
  import os
  env = dict(os.environ)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_quickstart_smoke_end_to_end_and_eval_reprints(tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  # A channel recipe is overridable from the command line (a tuple, not a list).
  common = ["--config", "configs/quickstart.py:smoke", f"--config.dataset.data_dir={tiny_data_dir}",
            f"--workdir={workdir}", "--config.data.recipe=((0, 40, 80), (0, 80, 200))"]
  run = _launch(*common)
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads((workdir / "config.json").read_text())["data"]["recipe"] == [[0, 40, 80], [0, 80, 200]]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["step"] == 6 and metrics["split"] == "test"
  assert metrics["n_slices"] > 0 and metrics["n_scans"] > 0
  assert set(metrics["slice"]) >= {"any", "epidural", "subdural", "weighted_log_loss"}
  assert 0.0 <= metrics["baseline_bright_fraction"]["slice_auc_any"] <= 1.0
  assert "slice AUC" in run.stdout and "No-learning baseline" in run.stdout
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in rows)
  assert list(workdir.glob("events.out.tfevents.*"))
  trained = (workdir / "config.json").read_text()
  again = _launch(*common, "--mode=eval", "--config.train.keep_checkpoints=99")
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / "metrics.json").read_text()) == metrics
  # The training record stays; the evaluation's overrides are recorded beside it.
  assert (workdir / "config.json").read_text() == trained
  assert json.loads(trained)["train"]["keep_checkpoints"] != 99
  assert json.loads((workdir / "config.eval.json").read_text())["train"]["keep_checkpoints"] == 99
  table = run.stdout[run.stdout.index("Held-out"):]
  assert table.strip() in again.stdout
  # Training on with another learning rate is refused before any work, naming the key and the way out …
  changed = _launch(*common, "--config.optimizer.learning_rate=0.01")
  assert changed.returncode != 0 and "Resuming" not in changed.stdout
  assert f"{workdir / 'config.json'}: this workdir holds checkpoints up to step 6" in changed.stderr
  assert "\n  optimizer.learning_rate: 0.001 -> 0.01\n" in changed.stderr and "--allow_config_change" in changed.stderr
  assert (workdir / "config.json").read_text() == trained
  # … and goes on with --allow_config_change, the change recorded (with one that needs no flag).
  allowed = _launch(*common, "--config.optimizer.learning_rate=0.01", "--allow_config_change",
                    "--config.eval.batch_size=32")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert "Resuming from step 6 of 6" in allowed.stdout
  record = json.loads((workdir / "config.json").read_text())
  (entry,) = record["config_history"]
  assert entry["at_step"] == 6 and entry["how"] == "--allow_config_change"
  assert entry["changes"] == {"eval.batch_size": [16, 32], "optimizer.learning_rate": [0.001, 0.01]}
  assert loop.read_config(workdir).optimizer.learning_rate == 0.01


def test_diverged_loss_stops_without_checkpointing_nan(smoke_config, tmp_path, monkeypatch):
  real_loss = tasks.MultilabelClassification.loss

  def nan_loss(self, model, batch):
    loss, metrics = real_loss(self, model, batch)
    return loss * jnp.nan, dict(metrics, loss=loss * jnp.nan)

  monkeypatch.setattr(tasks.MultilabelClassification, "loss", nan_loss)
  with pytest.raises(FloatingPointError, match="loss is nan"):
    loop.train(smoke_config, tmp_path / "nan")
  assert not list((tmp_path / "nan" / "checkpoints").glob("[0-9]*"))


def test_equal_steps_compile_once_per_process(smoke_config):
  # Stages of an experiment (five base U-Nets) build the same step again; they share one jitted function,
  # whatever their seed, data or initial weights, and a different optimizer or task gets its own.
  a = smoke_config
  b = a.copy_and_resolve_references()
  b.seed, b.data.sampling.lesion = 7, "subdural"
  b.model.init_from = "/elsewhere"
  exp_a, exp_b = loop.make_experiment(a), loop.make_experiment(b)
  assert loop.make_train_step(exp_a) is loop.make_train_step(exp_b)
  assert loop.make_predict_step(exp_a) is loop.make_predict_step(exp_b)
  assert loop.make_predict_step(exp_a, "export") is not loop.make_predict_step(exp_a)
  c = a.copy_and_resolve_references()
  c.optimizer.learning_rate = 0.5
  assert loop.make_train_step(loop.make_experiment(c)) is not loop.make_train_step(exp_a)
  c = a.copy_and_resolve_references()
  c.task.label_smoothing = 0.1
  assert loop.make_predict_step(loop.make_experiment(c)) is not loop.make_predict_step(exp_a)
  # A step never outlives the code it traced: a replaced loss gets a new step.
  real = tasks.MultilabelClassification.loss
  try:
    tasks.MultilabelClassification.loss = lambda self, model, batch: real(self, model, batch)
    fresh = loop.make_train_step(loop.make_experiment(a))
  finally:
    tasks.MultilabelClassification.loss = real
  assert fresh is not loop.make_train_step(exp_a)
