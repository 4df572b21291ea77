"""config.json: the record of the config a workdir trained with, kept true when a run is resumed.

Rerunning a training command on a workdir resumes from its checkpoints. Had
the config changed in between (another dataset, model or learning rate), the
run would continue the old weights under the new settings while config.json
named only the new ones. So before config.json is written, the new config is
compared with the recorded one, key by dotted key (`differences`):

- keys of NO_EFFECT do not change the trained weights: accepted and recorded;
- any other difference is refused (`ConfigChanged`: each key with its old and
  new value) unless the caller allows it (`launch.py --allow_config_change`),
  and then it is recorded too.

The record is config.json's reserved top-level key HISTORY, a list of
{"time", "at_step", "changes": {key: [old, new]}, "how"} ("(absent)" for a key
one side lacks). `read` takes it out, so config.json still loads as the config
(`loop.read_config`).

Training also records the run's provenance under the reserved key PROVENANCE
(`run_provenance`, as MONAI bundles' metadata.json records theirs): the software
that trained it (`ich_jax.provenance.software`), the data it read
(`dataset_record`: dataset name, builder config and version, the build's folder,
the splits trained, evaluated and validated on) and `config_hash`, which a
bundle member carries on (`ich_jax.bundle.export`). A run resumed under other
software (a new jax) is not refused: its newer provenance replaces the old one
and the differences join HISTORY (how: PROVENANCE_HOW).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

from ich_jax import atomic

log = logging.getLogger("ich_jax.train")

RECORD = "config.json"
HISTORY = "config_history"
PROVENANCE = "provenance"
ALLOW_FLAG = "--allow_config_change"
# Keys that leave the trained weights as they are: how often metrics are logged or shown, when
# checkpoints are written and how many are kept (the state after step N does not depend on them: a run
# killed and resumed at any step ends bit-equal, tests/train/test_kill_resume.py), and the evaluation
# settings (the evaluation after training is redone whole from the final state). Which checkpoints are kept
# does matter to evaluate.select_checkpoint; an experiment stage that selects is also guarded by its
# stage.json fingerprint, which covers the whole config (ich_jax.experiments.runner). Data-loading knobs
# (data.read_threads, data.num_workers) are not here: the input iterator's saved state may depend on them.
# Where a real dataset's download lies (dataset.manual_dir) changes no trained weight: the build it makes is
# the same, and a folder moved between runs must not stop a resume.
NO_EFFECT = ("train.log_every", "train.progress", "train.checkpoint_every", "train.keep_checkpoints", "eval.*",
             "dataset.manual_dir")
NO_EFFECT_HOW = "no effect on the run"
PROVENANCE_HOW = "resumed under other software or data (recorded, not refused)"
ABSENT = "(absent)"


class ConfigChanged(ValueError):
  """A rerun's config differs from the workdir's recorded one in keys that change the run."""


def as_json(config) -> dict:
  """A config (ConfigDict or mapping) as the plain JSON values config.json holds (tuples become lists)."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=list))


def as_tuples(x):
  """JSON lists back to the tuples configs hold (model options such as `widths`), recursively: config.json
  and a bundle's manifest store a config's tuples as lists."""
  if isinstance(x, Mapping):
    return {k: as_tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(as_tuples(v) for v in x)
  return x


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} → {"a.b": 1}; an empty section stays a value ({}) so that filling it is a change."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differences(old: Mapping, new: Mapping) -> dict[str, tuple[Any, Any]]:
  """Dotted key → (old value, new value) for every key whose value differs (ABSENT where one side lacks it)."""
  a, b = flatten(old), flatten(new)
  out = {}
  for key in sorted(a.keys() | b.keys()):
    before, after = a.get(key, ABSENT), b.get(key, ABSENT)
    if before != after:
      out[key] = (before, after)
  return out


def has_effect(key: str) -> bool:
  """Whether a change of the dotted `key` changes the run (not in NO_EFFECT)."""
  return not any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in NO_EFFECT)


def config_hash(config) -> str:
  """SHA-256 of the canonical JSON (sorted keys, no spaces) of `config`'s keys that change the run (`has_effect`):
  equal for two runs whose configs differ only in NO_EFFECT keys (logging, checkpoint cadence, evaluation)."""
  body = {k: v for k, v in flatten(as_json(config)).items() if has_effect(k)}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dataset_record(config) -> dict:
  """What a run of `config` reads: {"name", "config", "version", "folder", "kind", "train_split", "eval_split"},
  plus "validation_split" and "exports" (the runs whose outputs a staged run reads) where the config has them.

  For a TFDS dataset (a `dataset.data_dir`) "config" is the builder config's name as built (physionet_ct_ich's
  `<config>_exclude_chronic`, seed 002 §3), "version" the builder version whose folder the run reads
  ("1.2.0") and "folder" that folder; None for a run of exports only (seed 003's sequence models)."""
  d = config.dataset
  out = {"name": d.get("name"), "config": d.get("config"), "version": None, "folder": None,
         "kind": d.get("kind", "slices"), "train_split": d.get("train_split"), "eval_split": d.get("eval_split")}
  if d.get("validation_split"):
    out["validation_split"] = d.validation_split
  if d.get("exports"):
    out["exports"] = [str(e) for e in d.exports]
  if d.get("data_dir"):
    from ich_jax.data import datasets

    b = datasets.builder(d)
    out.update(config=b.builder_config.name, version=str(b.version), folder=str(b.data_dir))
  return out


def run_provenance(config) -> dict:
  """config.json's PROVENANCE for a run of `config`: {"software", "dataset" (`dataset_record`), "config_hash"}."""
  from ich_jax.provenance import software

  return {"software": software(), "dataset": dataset_record(config), "config_hash": config_hash(config)}


def _show(value) -> str:
  return ABSENT if value is ABSENT else json.dumps(value)


def refusal(path: pathlib.Path, changes: Mapping[str, tuple], at_step: int) -> str:
  """The error of a refused rerun: the file, each key with its old and new value, and the ways out."""
  what = (f"holds checkpoints up to step {at_step} of a run with another config; resuming them" if at_step
          else "was started with another config (no checkpoint yet); rerunning it")
  keys = "\n".join(f"  {k}: {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items())
  return (f"{path}: this workdir {what} with this config would mix the two. {len(changes)} key(s) that change "
          f"the run differ (recorded -> now):\n{keys}\n"
          f"Rerun with the recorded values, choose another --workdir, or pass {ALLOW_FLAG} to go on with the new "
          f"values (recorded in {path.name}'s {HISTORY!r}). Keys that may change freely: {', '.join(NO_EFFECT)}.")


def _load(workdir) -> dict | None:
  """config.json's whole content (the config, HISTORY and PROVENANCE); None if there is none."""
  path = pathlib.Path(workdir) / RECORD
  if not path.is_file():
    return None
  try:
    body = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); it records the config this workdir trained with: "
                     "restore it, or start afresh in another --workdir") from e
  if not isinstance(body, dict):
    raise ValueError(f"{path}: holds a {type(body).__name__}, not a config")
  return body


def read(workdir) -> tuple[dict | None, list]:
  """A workdir's recorded config (plain JSON values, without HISTORY and PROVENANCE) and its history; (None, [])
  if none."""
  body = _load(workdir)
  if body is None:
    return None, []
  body.pop(PROVENANCE, None)
  history = body.pop(HISTORY, [])
  return body, list(history)


def read_provenance(workdir) -> dict | None:
  """A workdir's recorded PROVENANCE (`run_provenance`); None if its config.json has none (a run trained before
  provenance was recorded) or there is no config.json."""
  body = _load(workdir)
  return None if body is None else body.get(PROVENANCE)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record(workdir, config, *, at_step: int, allow_change: bool = False, how: str = ALLOW_FLAG,
           write: bool = True, provenance: Mapping | None = None) -> dict | None:
  """Compares `config` with `workdir`'s config.json, then writes it there (atomically) with the changes.

  `at_step`: the step training resumes from (the newest checkpoint's, 0 if
  none). Differences that change the run raise ConfigChanged unless
  `allow_change`, in which case `how` says why they were accepted. `write`:
  False on the processes that only check (all check, so all refuse alike;
  process 0 writes). `provenance`: the run's PROVENANCE (`run_provenance(config)`;
  training passes it), replacing the recorded one, whose differences join
  HISTORY when checkpoints exist (`at_step` > 0); None keeps the recorded one.
  Returns the history entry of the config's changes, or None (the same config,
  or no config.json before).
  """
  workdir = pathlib.Path(workdir)
  new = as_json(config)
  for key in (HISTORY, PROVENANCE):
    if key in new:
      raise ValueError(f"config field {key!r} is reserved: {RECORD} records the run's {key.replace('_', ' ')} "
                       "under it")
  old, history = read(workdir)
  recorded = read_provenance(workdir)
  entry = None
  changes = differences(old, new) if old is not None else {}
  if changes:
    effect = {k: v for k, v in changes.items() if has_effect(k)}
    if effect and not allow_change:
      raise ConfigChanged(refusal(workdir / RECORD, effect, at_step))
    entry = {"time": _now(), "at_step": int(at_step),
             "changes": {k: list(pair) for k, pair in changes.items()},
             "how": how if effect else NO_EFFECT_HOW}
    history.append(entry)
    log.info("%s: config changed at step %d (%s): %s", workdir / RECORD, at_step, entry["how"], ", ".join(changes))
  elif old is None and at_step:
    log.warning("%s: checkpoints up to step %d but no %s to compare the config with; recording this one",
                workdir, at_step, RECORD)
  provenance = recorded if provenance is None else json.loads(json.dumps(provenance))
  if at_step and provenance != recorded:
    # The weights so far came from the recorded software and data; the run goes on under these. A changed
    # config_hash follows from the config's changes, recorded above.
    moved = differences({PROVENANCE: recorded} if recorded else {}, {PROVENANCE: provenance})
    moved.pop(f"{PROVENANCE}.config_hash", None)
    if moved:
      history.append({"time": _now(), "at_step": int(at_step), "how": PROVENANCE_HOW,
                      "changes": {k: list(pair) for k, pair in moved.items()}})
      log.info("%s: provenance changed at step %d: %s", workdir / RECORD, at_step, ", ".join(moved))
  if old is not None and not changes and provenance == recorded:
    return None
  if write:
    workdir.mkdir(parents=True, exist_ok=True)
    body = {**new, **({PROVENANCE: provenance} if provenance is not None else {}),
            **({HISTORY: history} if history else {})}
    atomic.write_text(workdir / RECORD, json.dumps(body, indent=2))
  return entry
