"""A bundle's members loaded: each model rebuilt by name, its variables filled from the arrays, its task and
preprocessing plan, and its jitted calls (shared by members of the same model and task).
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ich_jax.bundle.format import DATA_FIELDS, MEAN, BundleError, read_listed, unflatten_state
from ich_jax.train.config_record import as_tuples


def window(entry: Mapping) -> dict | None:
  """A member's sliding window {"patch", "stride"} (its task's, seed 002's patch U-Net), or None: whole slices."""
  import ml_collections

  from ich_jax.train import tasks

  if entry["task"] is None:   # a mean member
    return None
  task = tasks.build(ml_collections.ConfigDict(entry["task"]))
  return {"patch": task.patch, "stride": task.stride} if getattr(task, "patch", 0) else None


def plan_of(data: Mapping):
  """A member's `data` entry → the pipeline plan preprocessing runs with (no augmentation)."""
  import ml_collections

  from ich_jax.data import slice_plan

  cfg = ml_collections.ConfigDict({**{k: data[k] for k in DATA_FIELDS}, "augment": {"enabled": False}})
  return slice_plan.from_config(cfg)


@dataclasses.dataclass
class Member:
  """One loaded model: its entry, task, eval-mode graph and variables, preprocessing plan and jit functions (a
  mean member: its entry alone)."""
  entry: dict
  task: Any
  graphdef: Any
  state: tuple          # (params, model_state), merged into graphdef for every call
  plan: Any = None      # slice_plan.Plan for slice-input members
  fns: dict = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return self.entry["name"]

  @property
  def role(self) -> str:
    return self.entry["role"]

  def jitted(self, method: str):
    """jit(state, batch) → the task's `method` ("predict" or "export") outputs, built once per member and
    shared by members of the same model and task (seed 000's five U-Nets compile once)."""
    if method not in self.fns:
      key = (json.dumps(self.entry["model"], sort_keys=True), json.dumps(self.entry["task"], sort_keys=True), method)
      if key not in _SHARED_FNS:
        import jax
        from flax import nnx

        task_fn, graphdef = getattr(self.task, method), self.graphdef

        def fn(state, batch):
          return task_fn(nnx.merge(graphdef, *state), batch)

        if len(_SHARED_FNS) >= 32:
          _SHARED_FNS.pop(next(iter(_SHARED_FNS)))
        _SHARED_FNS[key] = jax.jit(fn)
      self.fns[method] = _SHARED_FNS[key]
    return self.fns[method]


# Jitted member calls by (model, task, method): equal members trace the same program (see Member.jitted).
_SHARED_FNS: dict[tuple, Any] = {}


def load_member(directory: pathlib.Path, manifest: Mapping, entry: dict) -> Member:
  """The member `entry` of the bundle in `directory`: its model rebuilt abstractly, then filled from its params
  file (read through the manifest's hash), in eval mode."""
  import ml_collections
  from flax import nnx

  from ich_jax import models
  from ich_jax.train import tasks

  if entry["role"] == MEAN:
    return Member(entry, None, None, None)
  m = entry["model"]
  try:
    abstract = nnx.eval_shape(lambda: models.build(m["name"], num_classes=int(m["num_classes"]),
                                                   in_channels=int(m["in_channels"]), rngs=nnx.Rngs(0),
                                                   **as_tuples(m.get("options") or {})))
  except (KeyError, TypeError, ValueError) as e:
    raise BundleError(f"{directory}: member {entry['name']!r}: cannot build model {m['name']!r} with "
                      f"{m}: {e}") from e
  abstract.eval()
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  where = f"{directory / entry['params']} (member {entry['name']!r}, model {m['name']!r})"
  with np.load(io.BytesIO(read_listed(directory, manifest, entry["params"])), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  state = unflatten_state({"params": params, "model_state": rest}, arrays, entry.get("key_arrays", {}), where)
  task = tasks.build(ml_collections.ConfigDict(entry["task"]))
  plan = plan_of(entry["data"]) if entry.get("data") else None
  return Member(entry, task, graphdef, (state["params"], state["model_state"]), plan)

