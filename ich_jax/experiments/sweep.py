"""Sweeps: one run (or whole experiment) per entry of a list of config overrides, then one table over them.

  python launch.py --config C --sweep S --workdir W

S is a Python file whose `get_sweep(arg)` returns a list of dicts of dotted
config overrides, one run each (key "name" names its folder; otherwise the
overrides do). `sweep_stages` makes the stages (each run by
`ich_jax.experiments.runner`, finished ones skipped), `collate` the table over
their evaluations (W/sweep.md, W/sweep.csv).
"""
from __future__ import annotations

import copy
import csv
import importlib.util
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ich_jax import atomic, experiments
from ich_jax.experiments import runner
from ich_jax.experiments.runner import Stage
from ich_jax.jsonable import jsonable


def load_python(spec: str, function: str):
  """`path[:arg]` of a Python file → `function(arg)` of it (the config-file convention, for sweep files)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  module_spec = importlib.util.spec_from_file_location(f"_ich_jax_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise AttributeError(f"{path} defines no {function}(arg)")
  return getattr(module, function)(arg or None)


def override(config, overrides: Mapping[str, Any], *, what: str = "override"):
  """A copy of `config` with dotted keys set ("data.recipe": ...); a key the config lacks is an error."""
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    parts = key.split(".")
    target = out
    for depth, part in enumerate(parts[:-1]):
      if part not in target:
        raise KeyError(f"{what}: the config has no field {'.'.join(parts[:depth + 1])!r} (in {key!r})")
      target = target[part]
    if parts[-1] not in target:
      raise KeyError(f"{what}: the config has no field {key!r}")
    target[parts[-1]] = value
  return out


def _entry_name(entry: Mapping[str, Any]) -> str:
  if "name" in entry:
    name = str(entry["name"])
  else:
    name = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in entry.items()) or "base"
  if not re.fullmatch(r"[A-Za-z0-9_.=,+\-]+", name):
    name = re.sub(r"[^A-Za-z0-9_.=,+\-]+", "_", name).strip("_")
  return name


def _short(value) -> str:
  if not isinstance(value, (list, tuple, dict)):
    return str(value)
  return json.dumps(jsonable(value), separators=(",", ":"), sort_keys=True)


def sweep_stages(base, entries: Sequence[Mapping[str, Any]]) -> list[Stage]:
  """One stage per sweep entry: the base config with the entry's overrides (train and evaluate, or the experiment)."""
  if not entries:
    raise ValueError("the sweep has no entries")
  stages = []
  for i, entry in enumerate(entries):
    name = _entry_name(entry)
    overrides = {k: v for k, v in entry.items() if k != "name"}
    config = override(base, overrides, what=f"sweep entry {i} ({name})")
    stages.append(Stage(name, config, params={"overrides": overrides}))
  return stages


def evaluation_dir(stage: Stage, root) -> pathlib.Path:
  """Where a stage's evaluation (metrics.json, predictions.csv) lies: its folder, or its experiment's final stage."""
  workdir = pathlib.Path(root) / stage.name
  if stage.config is not None and stage.config.get("experiment") is not None:
    final = experiments.final_stage(stage.config)
    if final is None:
      raise ValueError(f"experiment {stage.config.experiment.name!r} has no single final evaluation to collate")
    workdir = workdir / final
  return workdir


def collate(stages: Sequence[Stage], root, *, out_name: str = "sweep") -> list[dict]:
  """Reads every stage's evaluation; writes `<root>/<out_name>.md` and `.csv`; returns the rows.

  Columns: AUC(any) with its CI, weighted log-loss, sensitivity and
  specificity at slice and scan level, and the scan-level DeLong test of
  each row's AUC(any) against the first row's (same scans only).
  """
  from ich_jax.eval import metrics as M
  from ich_jax.eval import prediction_files
  from ich_jax.eval.formatting import auc_ci, number, p_value

  root = pathlib.Path(root)
  rows, first = [], None
  for stage in stages:
    d = evaluation_dir(stage, root)
    m = json.loads((d / "metrics.json").read_text())
    preds = prediction_files.read_predictions(d / "predictions.csv")
    row = {"name": stage.name, "overrides": _short(dict(stage.params.get("overrides", {}))), "dir": str(d)}
    for level in ("slice", "scan"):
      any_ = m[level]["any"]
      row.update({f"{level}_auc_any": any_["auc"], f"{level}_auc_any_ci": any_.get("auc_ci"),
                  f"{level}_log_loss": m[level]["weighted_log_loss"],
                  f"{level}_sensitivity_any": any_["sensitivity"], f"{level}_specificity_any": any_["specificity"]})
    ids, scan_p = M.scan_scores(preds["probabilities"][:, 0], preds["study_id"])
    _, scan_y = M.scan_scores(preds["labels"][:, 0], preds["study_id"])
    if first is None:
      first = (ids, scan_y, scan_p)
      row.update(delta_scan_auc=None, delong_p=None)
    elif len(ids) == len(first[0]) and (ids == first[0]).all():
      t = M.delong_test(first[1] > 0.5, scan_p, first[2])
      row.update(delta_scan_auc=t["auc_a"] - t["auc_b"], delong_p=t["p_value"])
    else:
      row.update(delta_scan_auc=None, delong_p=None)
    rows.append(row)

  header = ["Run", "Overrides", "Slice AUC(any) [95% CI]", "Scan AUC(any) [95% CI]", "Slice log-loss",
            "Scan log-loss", "Scan sens.", "Scan spec.", f"Δ scan AUC vs {rows[0]['name']}", "DeLong p"]
  table = [[r["name"], f"`{r['overrides']}`",
            auc_ci({"auc": r["slice_auc_any"], "auc_ci": r["slice_auc_any_ci"]}),
            auc_ci({"auc": r["scan_auc_any"], "auc_ci": r["scan_auc_any_ci"]}),
            number(r["slice_log_loss"]), number(r["scan_log_loss"]), number(r["scan_sensitivity_any"]),
            number(r["scan_specificity_any"]),
            # "—": no comparison made (the first row, or other scans), rather than a number that is missing.
            "—" if r["delta_scan_auc"] is None else number(r["delta_scan_auc"], "+.3f"),
            "—" if r["delong_p"] is None else p_value(r["delong_p"])]
           for r in rows]
  lines = [f"# Sweep: {len(rows)} runs", "",
           "Each run's own report.md is in its folder. AUC intervals: the runs' bootstrap; DeLong p: two-sided, "
           "scan level, against the first row.", "",
           "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in table]
  atomic.write_text(root / f"{out_name}.md", "\n".join(lines) + "\n")
  with atomic.open_write(root / f"{out_name}.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
  print("\n".join(lines), flush=True)
  return rows


def run_sweep(base, sweep_spec: str, root, *, allow_config_change: bool = False) -> list[dict]:
  """`launch.py --sweep`: every entry of the sweep file run (or skipped when finished), then one table."""
  entries = load_python(sweep_spec, "get_sweep")
  stages = sweep_stages(base, entries)
  runner.run_stages(stages, root, allow_config_change=allow_config_change, run_experiment=experiments.run)
  import jax

  return collate(stages, root) if jax.process_index() == 0 else []
