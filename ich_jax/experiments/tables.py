"""What the experiment reports share: a stage's evaluation, and the evaluation report's number formats.

The formatters are ich_jax.eval.report's, so an experiment's tables print
numbers exactly as every run's report.md does.
"""
from __future__ import annotations

import json
import pathlib

from ich_jax.eval.report import _auc_ci as auc_ci  # {"auc", "auc_ci"} → "0.953 [0.938–0.965]"; NA when undefined
from ich_jax.eval.report import _f3 as f3
from ich_jax.eval.report import _md_table as md_table
from ich_jax.eval.report import _p as p_value
from ich_jax.eval.report import write_text  # atomic: beside, then renamed

__all__ = ["auc_ci", "f3", "md_table", "p_value", "read_metrics", "write_text"]


def read_metrics(workdir) -> dict:
  """metrics.json of a stage's evaluation (`evaluate.write_evaluation`)."""
  path = pathlib.Path(workdir) / "metrics.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: the stage has no evaluation yet (run the experiment to the end)")
  return json.loads(path.read_text())
