"""A run's records written whole or not at all: a writer SIGKILLed mid-write leaves the old file, never a prefix."""
import pathlib
import signal
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILL = pathlib.Path(__file__).with_name("kill.py")


def _killed_in_write(name, *command):
  """Runs `command` (a script and its arguments, or -c CODE) killed once half of its first write to `name` is on disk."""
  return subprocess.run([sys.executable, str(KILL), "write", name, *command], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_config_json_killed_mid_write_keeps_the_recorded_config(tmp_path):
  from configs import quickstart

  # The workdir's record says log_every 3; the rerun logs every 2 (no effect on the run), so config.json is
  # rewritten with the change, and the process dies halfway through writing it, before any data is read.
  workdir, data_dir = tmp_path / "run", str(tmp_path / "tfds")
  workdir.mkdir()
  config = quickstart.get_config("smoke")
  config.dataset.data_dir, config.train.log_every = data_dir, 3
  recorded = config.to_json_best_effort(indent=2)
  (workdir / "config.json").write_text(recorded)
  run = _killed_in_write("config.json", "launch.py", "--config", "configs/quickstart.py:smoke",
                         f"--config.dataset.data_dir={data_dir}", f"--workdir={workdir}")
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  assert (workdir / "config.json").read_text() == recorded
  # The half-written new record is the hidden temporary file beside it.
  (partial,) = workdir.glob(".config.json.ich-jax-tmp.*")
  assert 0 < partial.stat().st_size < len(recorded)


PREDICTIONS = """
import numpy as np
from ml_collections import ConfigDict
from ich_jax.eval import report

def preds(shift):
  rng = np.random.default_rng(0)
  labels = np.zeros((40, 6), np.float32)
  labels[:20, 0] = 1
  return {"probabilities": np.clip(0.5 * labels + shift * rng.random((40, 6)), 0, 1).astype(np.float32),
          "labels": labels, "study_id": np.array([f"s{i // 2}" for i in range(40)]),
          "mask": rng.integers(0, 2, (40, 32, 32)).astype(np.uint8)}

def write(workdir, shift):
  report.write_evaluation(preds(shift), workdir, ConfigDict({"threshold": 0.5, "n_boot": 10, "figures": False}),
                          title="killed", quiet=True)
"""


def test_predictions_npz_killed_mid_write_keeps_the_previous_evaluation(tmp_path):
  env = {}
  exec(PREDICTIONS, env)
  env["write"](tmp_path, 0.2)
  before = (tmp_path / "predictions.npz").read_bytes()
  run = _killed_in_write("predictions.npz", "-c", PREDICTIONS + f"\nwrite({str(tmp_path)!r}, 0.9)\n")
  assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
  assert (tmp_path / "predictions.npz").read_bytes() == before
  with np.load(tmp_path / "predictions.npz") as kept:
    np.testing.assert_array_equal(kept["probabilities"], env["preds"](0.2)["probabilities"])
  (partial,) = tmp_path.glob(".predictions.npz.ich-jax-tmp.*")
  assert partial.stat().st_size > 0
