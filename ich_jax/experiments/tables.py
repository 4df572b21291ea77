"""What the experiment reports share: reading a stage's evaluation and formatting its numbers."""
from __future__ import annotations

import json
import pathlib
from ich_jax.eval.report import _auc_ci as auc_ci  # "0.953 [0.938–0.965]"
from ich_jax.eval.report import _f3 as f3
from ich_jax.eval.report import _md_table as md_table
from ich_jax.eval.report import _p as p_value

__all__ = ["auc_ci", "f3", "md_table", "p_value", "read_metrics", "write_text"]


def read_metrics(workdir) -> dict:
  """metrics.json of a stage's evaluation (`evaluate.write_evaluation`)."""
  path = pathlib.Path(workdir) / "metrics.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: the stage has no evaluation yet (run the experiment to the end)")
  return json.loads(path.read_text())


def write_text(path, text: str) -> pathlib.Path:
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)
  return path
