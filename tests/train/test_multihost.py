"""Two `jax.distributed` processes on 127.0.0.1 (gloo CPU collectives) train like one process."""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from ich_jax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(smoke_config, tiny_data_dir, tmp_path):
  port = _free_port()
  workdir = tmp_path / "two"
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs.append(subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--config", "configs/quickstart.py:smoke",
         f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "Held-out" in outs[0][0] and "Held-out" not in outs[1][0]  # process 0 reports

  # The same config in this one process (8 devices): the 2×4-device run saw the
  # same global batches, so it must reach the same params up to reduction order.
  _, single = loop.train(smoke_config, tmp_path / "one")
  _, two, step = loop.restore_for_eval(smoke_config, workdir)
  assert step == smoke_config.train.num_steps
  for a, b in zip(jax_leaves(single["params"]), jax_leaves(two["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)

  preds = np.load(workdir / "predictions.npz")
  from ich_jax.data import datasets
  n_test = len(datasets.open_split(smoke_config.dataset, "test"))
  np.testing.assert_array_equal(preds["record_index"], np.arange(n_test))  # every record once


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
