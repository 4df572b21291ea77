"""Every registered classifier trains and evaluates through `launch.py` with a config naming it.

Slow (compiling DenseNet-169 or Inception-ResNet-v2 train steps takes a minute
or more on 2 cores), so CI skips it: `python -m pytest -q -m slow` runs it.
The default suite trains two representatives (tests/models/test_classifiers.py).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.models.test_classifiers import REFERENCE_PARAMS, _size

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_classifier_trains_and_evaluates_through_launch(name, tiny_data_dir, tmp_path):
  cmd = [sys.executable, "launch.py", "--config", "configs/quickstart.py:smoke", "--workdir", str(tmp_path),
         f"--config.dataset.data_dir={tiny_data_dir}", f"--config.model.name={name}",
         "--config.model.options={'mask_head': True}", f"--config.data.image_size={_size(name)}",
         "--config.train.num_steps=2", "--config.train.log_every=1", "--config.train.checkpoint_every=2"]
  # One CPU device, as a user's launch has: tests/conftest.py's 8 virtual devices would each hold a replica
  # of the train state in the same RAM (VGG-19's 143M parameters with Adam: 8 × 2.3 GB, over 24 GB).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags))
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["step"] == 2 and json.loads((tmp_path / "config.json").read_text())["model"]["name"] == name
  assert "slice AUC" in done.stdout
