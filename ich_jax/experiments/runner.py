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

The stages of an experiment are written in Python by its module
(`ich_jax.experiments`, their configs from `stage_configs`); sweeps make one
stage per entry (`ich_jax.experiments.sweep`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import pathlib
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
  from ich_jax.data import pipeline, sampling
  from ich_jax.train import loop

  data = loop.input_module(config)
  data.ensure_ready(config.dataset)
  source = data.open_split(config.dataset, config.dataset.train_split)
  sampler = sampling.epoch_sampler(source, config.data, seed=config.seed) if data is pipeline else None
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


def run_stage(stage: Stage, workdir: pathlib.Path, *, allow_config_change: bool = False,
              run_experiment: Callable | None = None) -> None:
  """Runs one stage in `workdir`; `allow_config_change`: a loop run may resume under a config that differs
  from its recorded config.json in keys that change the run (ich_jax.train.config_record).
  `run_experiment`: how a nested experiment runs (`ich_jax.experiments.run`, which the callers above this
  module pass down: the runner knows no experiment by name)."""
  import jax

  if stage.fn is not None:
    # Host steps read and write files: process 0 alone (run_stages syncs the others after it).
    if jax.process_index() == 0:
      workdir.mkdir(parents=True, exist_ok=True)
      stage.fn(workdir)
  elif stage.config.get("experiment") is not None:
    if run_experiment is None:
      raise ValueError(f"stage {stage.name!r} is an experiment ({stage.config.experiment.name!r}): run it with "
                       "run_experiment=ich_jax.experiments.run")
    run_experiment(stage.config, workdir, allow_config_change=allow_config_change)
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


def run_stages(stages: Sequence[Stage], root, *, only: Sequence[str] | None = None, compile_cache: bool = True,
               allow_config_change: bool = False, run_experiment: Callable | None = None) -> dict[str, str]:
  """Runs `stages` in order under `root`, skipping finished ones; returns {name: fingerprint}.

  `only`: names (or folder prefixes, "densenet121/") to run; the others are
  not run but still fingerprinted (a later stage's fingerprint depends on them).
  `compile_cache`: keep compiled programs in `root/compile_cache` (`use_compile_cache`).
  `allow_config_change`, `run_experiment`: see `run_stage` (a stale fingerprint is refused all the same).
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
    run_stage(stage, workdir, allow_config_change=allow_config_change, run_experiment=run_experiment)
    sharding.sync(f"stage {stage.name} end")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"[{i + 1}/{len(stages)}] {stage.name}: done in {wall:.1f} s ({cpu:.1f} CPU-s)", flush=True)
    if main:
      _write_marker(workdir, {**entry, "status": "done", "finished": _now(), "wall_s": round(wall, 1),
                              "cpu_s": round(cpu, 1)})
  return prints
