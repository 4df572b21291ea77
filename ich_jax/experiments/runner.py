"""Experiments as ordered stages: runs of the one training loop and host steps, each skipped once finished.

A `Stage` is one of
  - a loop run: `config` (a whole training config) and `steps`, a subset of
    ("train", "select_checkpoint", "eval", "export") run in that order in
    `root/name` (loop.train; evaluate.select_checkpoint: the kept checkpoint of
    best validation Jaccard, which eval and export then use; evaluate.evaluate;
    export.export_features: what `launch.py --mode ...` runs);
  - a nested experiment: `config` has an `experiment` field (a sweep over an
    experiment config runs the whole experiment once per entry);
  - a host step: `fn(workdir)` (combine exports, average predictions, write a
    report), with `params` saying what it reads. `always=True`: it runs on every
    invocation (a report that also reads outside the experiment, such as other
    experiments' runs, which may have appeared since).

`run_stages` runs them in list order. Each stage's folder gets `stage.json`
{"name", "fingerprint", "status", ...}: status "running" while it runs, "done"
after. The fingerprint hashes the stage's config, steps, params and the
fingerprints of the stages it reads (`after`), so on a rerun
  - a stage marked done with the same fingerprint is skipped;
  - one marked running resumes (loop.train continues from its checkpoints;
    exports and host steps rewrite their outputs atomically);
  - stages whose fingerprint differs stop the run before anything runs, all
    named: their folders hold another config's results or checkpoints (which
    loop.train would resume). Delete those folders to run them again.
A loop run also checks its folder's config.json as any resumed run does
(ich_jax.train.config_record), so a folder without stage.json that holds
another config's run is refused too (`allow_config_change` lets it go on).

A config whose `train.steps_per_epoch` is 0 gets `num_steps = train.epochs ×
(training examples // batch size)`, counted when the stage starts (the
training split of a later stage may only exist by then): a balanced epoch
(config.data.sampling) counts the balanced set, a series dataset its series.

An experiment may also spell its stages out in its config (`planned_stages`):
config.experiment.order names them, `stages.<name>` says each one's steps,
template, overrides and links to earlier stages, `cv` repeats the per-fold ones
once per cross-validation round (seed 000's weighted ensemble, seed 002's
patch U-Net); every planned stage is a loop run or a host step of HOST_STEPS.

Sweeps (`python launch.py --config C --sweep S --workdir W`): S is a Python
file whose `get_sweep(arg)` returns a list of dicts of dotted config
overrides, one run each (key "name" names its folder; otherwise the overrides
do). `sweep_stages` makes the stages, `collate` the table over their
evaluations.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import json
import logging
import pathlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


from ich_jax import atomic
from ich_jax.jsonable import jsonable

log = logging.getLogger("ich_jax.experiments")

STEPS = ("train", "select_checkpoint", "eval", "export")
MARKER = "stage.json"
# Host-step functions that moved, by their name now → the name finished stages were fingerprinted with, so
# that a rerun still finds those stages done (their stage.json holds the fingerprint of the old name).
MOVED = {"ich_jax.experiments.threshold_baseline.run_stage": "ich_jax.eval.threshold.run_stage"}


@dataclasses.dataclass
class Stage:
  name: str                                   # folder under the experiment root, "a/b" allowed
  config: Any = None                          # a training config (loop run) or an experiment config
  steps: tuple[str, ...] = ("train", "eval")
  fn: Callable[[pathlib.Path], Any] | None = None
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  after: tuple[str, ...] = ()                 # names of the stages whose outputs this one reads
  always: bool = False                        # a host step run on every invocation (see the module docstring)

  def __post_init__(self):
    if (self.config is None) == (self.fn is None):
      raise ValueError(f"stage {self.name!r}: give a config (a loop run) or a fn (a host step), not both or neither")
    bad = [s for s in self.steps if s not in STEPS]
    if bad:
      raise ValueError(f"stage {self.name!r}: unknown steps {bad}; expected a subset of {STEPS}")


# --- Fingerprints and markers ----------------------------------------------------------------


def fingerprint(stage: Stage, upstream: Mapping[str, str]) -> str:
  """sha256 of what the stage's outputs depend on: config, steps, params, the upstream stages' fingerprints."""
  missing = [a for a in stage.after if a not in upstream]
  if missing:
    raise ValueError(f"stage {stage.name!r} reads {missing}, which do not come before it")
  fn = getattr(stage.fn, "func", stage.fn)  # a functools.partial: its function (the arguments go in `params`)
  name = None if fn is None else f"{fn.__module__}.{getattr(fn, '__qualname__', '')}"
  what = {"config": jsonable(stage.config), "steps": list(stage.steps) if stage.config is not None else [],
          "fn": MOVED.get(name, name),
          "params": jsonable(dict(stage.params)), "after": {a: upstream[a] for a in stage.after}}
  return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(workdir) -> dict | None:
  path = pathlib.Path(workdir) / MARKER
  return json.loads(path.read_text()) if path.is_file() else None


def _write_marker(workdir: pathlib.Path, entry: dict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  atomic.write_text(workdir / MARKER, json.dumps(entry, indent=2))


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- Running --------------------------------------------------------------------------------


def resolve_steps(config):
  """`config` with `train.num_steps` from `train.epochs` when `train.steps_per_epoch` is 0 (else unchanged)."""
  if config.get("train") is None or config.train.get("steps_per_epoch", None) != 0:
    return config
  from ich_jax.data import pipeline
  from ich_jax.train import loop

  data = loop.input_module(config)
  data.ensure_ready(config.dataset)
  source = data.open_split(config.dataset, config.dataset.train_split)
  sampler = pipeline.epoch_sampler(source, config.data, seed=config.seed) if data is pipeline else None
  examples = sampler.length if sampler is not None else len(source)
  per_epoch = max(1, examples // int(config.train.batch_size))
  resolved = config.copy_and_resolve_references()
  resolved.train.steps_per_epoch = per_epoch
  resolved.train.num_steps = int(config.train.epochs) * per_epoch
  log.info("%s: %d examples per epoch → %d steps × %d epochs", config.dataset.train_split, examples, per_epoch,
           int(config.train.epochs))
  return resolved


def _run_loop(config, workdir: pathlib.Path, steps: Sequence[str], allow_config_change: bool = False) -> None:
  import jax

  from ich_jax.train import config_record, evaluate, export, loop

  config = resolve_steps(config)
  exp = state = step = None
  if "train" in steps:
    # loop.train records the config in config.json, refusing one that would change a resumed run.
    exp, state = loop.train(config, workdir, allow_config_change=allow_config_change)
    step = config.train.num_steps
  else:
    steps_done = loop.checkpoint_steps(config, workdir)
    config_record.record(workdir, config, at_step=steps_done[-1] if steps_done else 0,
                         allow_change=allow_config_change, write=jax.process_index() == 0)
  if "select_checkpoint" in steps:
    exp = state = None
    step = evaluate.select_checkpoint(config, workdir)
  if "eval" in steps:
    evaluate.evaluate(config, workdir, exp=exp, state=state, step=step)
  if "export" in steps:
    export.export_features(config, workdir, exp=exp, state=state, step=step)


def run_stage(stage: Stage, workdir: pathlib.Path, *, allow_config_change: bool = False) -> None:
  """Runs one stage in `workdir`; `allow_config_change`: a loop run may resume under a config that differs
  from its recorded config.json in keys that change the run (ich_jax.train.config_record)."""
  import jax

  if stage.fn is not None:
    # Host steps read and write files: process 0 alone (run_stages syncs the others after it).
    if jax.process_index() == 0:
      workdir.mkdir(parents=True, exist_ok=True)
      stage.fn(workdir)
  elif stage.config.get("experiment") is not None:
    from ich_jax import experiments

    experiments.run(stage.config, workdir, allow_config_change=allow_config_change)
  else:
    _run_loop(stage.config, workdir, stage.steps, allow_config_change)


def use_compile_cache(directory) -> None:
  """Compiled programs saved under `directory` and reused: the folds, seeds and backbones of an experiment
  compile the same train and predict programs again and again (the smoke cascade's CPU time halves).

  A cache directory already set (JAX_COMPILATION_CACHE_DIR) is kept.
  """
  import jax

  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_stages(stages: Sequence[Stage], root, *, only: Sequence[str] | None = None,
               compile_cache: bool = True, allow_config_change: bool = False) -> dict[str, str]:
  """Runs `stages` in order under `root`, skipping finished ones; returns {name: fingerprint}.

  `only`: names (or folder prefixes, "densenet121/") to run; the others are
  not run but still fingerprinted (a later stage's fingerprint depends on them).
  `compile_cache`: keep compiled programs in `root/compile_cache` (`use_compile_cache`).
  `allow_config_change`: see `run_stage` (a stale fingerprint is refused all the same).
  """
  import jax

  from ich_jax.train import sharding

  root = pathlib.Path(root)
  if compile_cache:
    use_compile_cache(root / "compile_cache")
  names = [s.name for s in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names repeat: {sorted({n for n in names if names.count(n) > 1})}")
  prints: dict[str, str] = {}
  for stage in stages:
    prints[stage.name] = fingerprint(stage, prints)
  selected = [only is None or any(s.name == o or s.name.startswith(o.rstrip("/") + "/") for o in only)
              for s in stages]
  markers = {s.name: read_marker(root / s.name) for s, chosen in zip(stages, selected) if chosen}
  # Every stage that would mix two configurations is named before anything runs. A stage run every time
  # rewrites its outputs, so it cannot mix two.
  always = {s.name for s in stages if s.always}
  stale = [n for n, m in markers.items()
           if m is not None and m.get("fingerprint") != prints[n] and n not in always]
  if stale:
    raise RuntimeError(
        f"{len(stale)} stage(s) in {root} ran with another configuration or other inputs than now: "
        f"{', '.join(repr(n) for n in stale)} (stage.json fingerprints differ); their results would mix the two. "
        f"Delete {' '.join(str(root / n) for n in stale)} to run them again.")
  main = jax.process_index() == 0
  for i, stage in enumerate(stages):
    if not selected[i]:
      continue
    workdir, fp, marker = root / stage.name, prints[stage.name], markers[stage.name]
    if marker is not None and marker.get("status") == "done" and not stage.always:
      print(f"[{i + 1}/{len(stages)}] {stage.name}: done, skipped", flush=True)
      continue
    resumed = marker is not None and not stage.always
    print(f"[{i + 1}/{len(stages)}] {stage.name}: {'resuming' if resumed else 'running'}", flush=True)
    entry = {"name": stage.name, "fingerprint": fp, "status": "running", "started": _now(),
             "steps": list(stage.steps) if stage.fn is None else ["host"], "after": list(stage.after)}
    if main:
      _write_marker(workdir, entry)
    sharding.sync(f"stage {stage.name} start")
    wall, cpu = time.perf_counter(), time.process_time()
    run_stage(stage, workdir, allow_config_change=allow_config_change)
    sharding.sync(f"stage {stage.name} end")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"[{i + 1}/{len(stages)}] {stage.name}: done in {wall:.1f} s ({cpu:.1f} CPU-s)", flush=True)
    if main:
      _write_marker(workdir, {**entry, "status": "done", "finished": _now(), "wall_s": round(wall, 1),
                              "cpu_s": round(cpu, 1)})
  return prints


def stage_config(template, dataset, seed: int, *, model=None, **fields):
  """A loop config from an experiment's parts: `template` (data, model, task, optimizer, train, eval), its dataset
  and seed; `model` ({"name", "options"}) replaces the template's model; `fields` set dataset fields (splits,
  kind, exports)."""
  config, dataset = template.copy_and_resolve_references(), dataset.copy_and_resolve_references()
  with dataset.unlocked():
    for key, value in fields.items():
      dataset[key] = value
  with config.unlocked():
    config.seed = int(seed)
    config.dataset = dataset
    if model is not None:
      config.model = {"name": model.name, "options": model.get("options", {})}
  return config


# --- Stages planned in the config ---------------------------------------------------------------
#
# config.experiment (the rest of the config is the base every planned stage starts from):
#   order      stage names, in run order
#   templates  name → overrides shared by several stages (shaped like the config)
#   stages     name → spec:
#     steps      loop steps (STEPS, in that order), or one host step of HOST_STEPS
#     template   a template name, or ""
#     overrides  merged over the base after the template (nested sections merge key by key)
#     replace    config sections (dotted) that the template or overrides replace instead of merging
#                (e.g. "task" when a stage trains another task)
#     links      ((config path, stage name or names), ...): the path gets those stages' workdirs
#                (`model.init_from`, `dataset.exports`), and the stage reads them (`Stage.after`);
#                a per-fold stage links to the same round's copy of a per-fold stage
#     per_fold   one copy per cross-validation round, `fold<k>/<name>`, with the round's splits
#   cv         num_folds, folds (the rounds to run), pool (the splits a dataset without stored folds is
#              cross-validated over; `ich_jax.data.datasets.cv_round`)

# Host steps a planned stage may name: "module:function", called as function(workdir, config=stage config).
HOST_STEPS = {
    "threshold_baseline": "ich_jax.experiments.threshold_baseline:run_stage",   # seed 002's grid-search baseline
}


def _plain(c) -> dict:
  return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def merge(base: dict, overrides: Mapping, replace: Sequence[str] = (), prefix: str = "") -> dict:
  """`base` (a plain nested dict, changed in place) with `overrides` merged in: nested mappings key by key,
  anything else replaces; a dotted path in `replace` is replaced whole."""
  for key, value in _plain(overrides).items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) and path not in replace:
      merge(base[key], value, replace, prefix=f"{path}.")
    else:
      base[key] = json.loads(json.dumps(value, default=list)) if isinstance(value, (Mapping, list, tuple)) else value
  return base


def _set_path(d: dict, path: str, value, where: str) -> None:
  *parents, last = path.split(".")
  for p in parents:
    if not isinstance(d.get(p), Mapping):
      raise KeyError(f"{where}: {p!r} of link {path!r} is not a section of the stage's config")
    d = d[p]
  d[last] = value


def _host_step(name: str) -> Callable:
  module, fn = HOST_STEPS[name].split(":")
  return getattr(importlib.import_module(module), fn)


def planned_stages(config, root) -> list[Stage]:
  """The stages `config.experiment` spells out (see above), in run order: loop runs and host steps."""
  from ml_collections import ConfigDict

  from ich_jax.data import datasets

  root = pathlib.Path(root)
  exp = config.experiment
  base = {k: v for k, v in _plain(config).items() if k != "experiment"}
  order = list(exp.order)
  unknown = [n for n in order if n not in exp.stages]
  if unknown:
    raise KeyError(f"config experiment.order names {unknown}, which experiment.stages lacks")
  per_fold = {n for n in order if exp.stages[n].get("per_fold", False)}
  rounds = tuple(int(k) for k in exp.cv.folds) if per_fold else ()
  if per_fold and not rounds:
    raise ValueError(f"config experiment.cv.folds is empty, but stages {sorted(per_fold)} run per fold")

  def key(name: str, fold: int | None) -> str:
    return name if fold is None else f"fold{fold}/{name}"

  out = []
  for fold in (None,) + rounds:
    for position, name in enumerate(order):
      spec, where = exp.stages[name], f"config experiment.stages.{name}"
      if (name in per_fold) != (fold is not None):
        continue
      cfg = json.loads(json.dumps(base, default=list))
      replace = tuple(spec.get("replace", ()))
      template = spec.get("template", "")
      if template:
        if template not in exp.templates:
          raise KeyError(f"{where}.template={template!r} is not in config experiment.templates")
        merge(cfg, exp.templates[template], replace)
      merge(cfg, spec.get("overrides", {}), replace)
      if fold is not None:
        splits = datasets.cv_round(ConfigDict(cfg["dataset"]), int(exp.cv.num_folds), fold, exp.cv.pool)
        cfg["dataset"].update(train_split=splits["train"], validation_split=splits["validation"],
                              eval_split=splits["test"])
      after = []
      for path, targets in spec.get("links", ()):
        names = (targets,) if isinstance(targets, str) else tuple(targets)
        dirs = []
        for target in names:
          if target not in order[:position]:
            raise KeyError(f"{where}.links: {target!r} is not a stage before {name!r}")
          if target in per_fold and fold is None:
            raise KeyError(f"{where}.links: {target!r} runs per fold and {name!r} does not")
          after.append(key(target, fold if target in per_fold else None))
          dirs.append(str((root / after[-1]).absolute()))
        _set_path(cfg, path, dirs[0] if isinstance(targets, str) else tuple(dirs), where)
      steps = tuple(spec.steps)
      hosts = [st for st in steps if st in HOST_STEPS]
      unknown = [st for st in steps if st not in HOST_STEPS and st not in STEPS]
      if unknown or (hosts and len(steps) > 1):
        raise KeyError(f"{where}.steps={steps}: expected loop steps among {STEPS} or one host step among "
                       f"{sorted(HOST_STEPS)}")
      stage_cfg = ConfigDict(cfg)
      if hosts:
        out.append(Stage(key(name, fold), fn=functools.partial(_host_step(hosts[0]), config=stage_cfg),
                         params={"config": stage_cfg}, after=tuple(after)))
      else:
        out.append(Stage(key(name, fold), stage_cfg, steps=steps, after=tuple(after)))
  return out


# --- Sweeps ---------------------------------------------------------------------------------


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
    from ich_jax import experiments

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
  run_stages(stages, root, allow_config_change=allow_config_change)
  import jax

  return collate(stages, root) if jax.process_index() == 0 else []
