"""SIGKILL, then the same command again: the run ends bit-equal to one never interrupted.

launch.py runs in a subprocess (tests/train/kill.py kills it at the chosen point,
without a hook in the code): once right after the metrics row of a random step
(seeded), once while a checkpoint is being saved (its files in Orbax's temporary
folder, not yet renamed). The rerun must end with the uninterrupted run's train
state, predictions.npz and metrics.jsonl, bit for bit.
"""
import os
import pathlib
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from ich_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILL = pathlib.Path(__file__).with_name("kill.py")
STEPS, EVERY = 8, 2
SEED = 17     # the kill points are random (an arbitrary seed), and the same on every run of the test


def _command(data_dir, workdir):
  # Logged every step, so the metrics of every step are compared; checkpointed every other one.
  return ["launch.py", "--config", "configs/quickstart.py:smoke", f"--config.dataset.data_dir={data_dir}",
          f"--workdir={workdir}", f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
          "--config.train.log_every=1", "--config.eval.baseline=False"]


def _run(args, cache, kill=()):
  # One persistent compile cache for every run of the module: each program compiles once.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  prefix = [str(KILL), *kill] if kill else []
  return subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("kill_resume")
  workdir = root / "uninterrupted"
  run = _run(_command(tiny_data_dir, workdir), root / "compile_cache")
  assert run.returncode == 0, run.stderr[-3000:]
  return root, workdir


def _assert_bit_equal(workdir, reference):
  config = loop.read_config(reference)
  _, want, want_step = loop.restore_for_eval(config, reference)
  _, got, got_step = loop.restore_for_eval(config, workdir)
  assert got_step == want_step == STEPS
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(path))
  with np.load(reference / "predictions.npz") as a, np.load(workdir / "predictions.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
      np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  # Each step logged once, with the values of the uninterrupted run.
  assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def _rerun(tiny_data_dir, root, workdir, resumed_from):
  again = _run(_command(tiny_data_dir, workdir), root / "compile_cache")
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resuming from step {resumed_from} of {STEPS}" in again.stdout


def test_killed_at_a_random_step_resumes_bit_equal(tiny_data_dir, uninterrupted):
  root, reference = uninterrupted
  workdir = root / "killed_at_step"
  step = random.Random(SEED).randint(EVERY + 1, STEPS - 1)
  killed = _run(_command(tiny_data_dir, workdir), root / "compile_cache", kill=("step", str(step)))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  # Killed after logging `step`, before saving it: the newest checkpoint is the one before.
  last = (step - 1) // EVERY * EVERY
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == last
  assert (workdir / "metrics.jsonl").read_text().splitlines()[-1].startswith(f'{{"step": {step},')
  _rerun(tiny_data_dir, root, workdir, last)
  _assert_bit_equal(workdir, reference)


def test_killed_while_saving_a_checkpoint_resumes_bit_equal(tiny_data_dir, uninterrupted):
  root, reference = uninterrupted
  workdir = root / "killed_in_save"
  step = random.Random(SEED).choice(range(2 * EVERY, STEPS, EVERY))
  killed = _run(_command(tiny_data_dir, workdir), root / "compile_cache", kill=("save", str(step)))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  # The checkpoint being saved is complete in its temporary folder, and not a checkpoint.
  (tmp,) = (workdir / "checkpoints").glob(f"{step}.orbax-checkpoint-tmp*")
  assert {p.name for p in tmp.iterdir()} >= {"state", "data"}
  assert not (workdir / "checkpoints" / str(step)).exists()
  _rerun(tiny_data_dir, root, workdir, step - EVERY)
  _assert_bit_equal(workdir, reference)
