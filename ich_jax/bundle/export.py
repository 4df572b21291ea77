"""A run folder's model bundle: this run and, recursively, the runs whose exports it trained on, as members.

  python launch.py --config C --workdir W --mode export [--out DIR]
  python -m ich_jax.bundle export --run W/STAGE --out DIR

`export_bundle` writes a self-contained model bundle from the run's selected
(else newest) checkpoint; a run that trained on other runs' exports (seed
003's sequence models, seed 000's weight model: `config.dataset.exports`)
brings those runs along as members, read from their workdirs' config.json and
checkpoints, so the bundle is the whole cascade.
"""
from __future__ import annotations

import pathlib
import re

import jax

from ich_jax import LABELS, atomic
from ich_jax.bundle.format import MASK_ROLES, ROLES, SLICE_ROLES, data_entry, member_entry, write
from ich_jax.train import evaluate, loop, sharding

# dataset.kind of runs that read other runs' exports (their members' inputs).
_STAGED_KINDS = ("series_features", "base_maps")


def _member_name(workdir: pathlib.Path, taken: set[str]) -> str:
  base = re.sub(r"[^A-Za-z0-9_.-]+", "_", workdir.name) or "model"
  name, k = base, 2
  while name in taken:
    name, k = f"{base}-{k}", k + 1
  return name


def export_bundle(config, workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes the model bundle of `workdir` (default `<workdir>/bundle`); returns its path.

  Members: this run, and recursively every run in its `config.dataset.exports`
  (each once), inputs first; each at the checkpoint its run selected
  (`evaluate.select_checkpoint`, seed 002's best validation Jaccard), else its
  newest. A member keeps its run's task config, so a U-Net trained on windows
  (`task.patch`, `task.stride`) predicts stitched, as its evaluation did.
  Outputs: the run's own probabilities; its mask if it segments or detects
  (a detector's mask is the label map of its instance masks); its boxes if it
  detects; Grad-CAM from the first classifier member.
  """
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out) if out is not None else workdir / "bundle"
  # Before any checkpoint is read: `--out` equal to (or holding) the run folder would replace its checkpoints.
  atomic.check_output(out, "bundle", protected=[workdir])
  members: list[tuple[dict, dict]] = []
  names: dict[pathlib.Path, str] = {}

  def add(cfg, run: pathlib.Path, chain: tuple) -> str:
    key = run.expanduser().absolute()
    if key in names:
      return names[key]
    if key in chain:
      raise ValueError(f"config dataset.exports of {run} leads back to itself: {[str(c) for c in chain]}")
    inputs = []
    if cfg.dataset.get("kind", "slices") in _STAGED_KINDS:
      inputs = [add(loop.read_config(w), pathlib.Path(w), chain + (key,)) for w in cfg.dataset.exports]
    exp, state, step = loop.restore_for_eval(cfg, run, evaluate.selected_step(run))
    data = loop.input_module(cfg)
    model = {"name": cfg.model.name, "num_classes": int(cfg.model.get("num_classes", len(LABELS))),
             "in_channels": int(data.in_channels(cfg)), "options": loop.model_options(cfg)}
    role = ROLES.get(cfg.task.name)
    name = _member_name(run, set(names.values()))
    entry, arrays, _ = member_entry(
        name, model=model, task=cfg.task, state=state,
        data=data_entry(cfg.data) if role in SLICE_ROLES else None, inputs=inputs,
        source={"workdir": str(key), "step": int(step), "dataset": f"{cfg.dataset.name}/{cfg.dataset.config}"})
    members.append((entry, arrays))
    names[key] = name
    return name

  top = add(config, workdir, ())
  roles = {e["name"]: e["role"] for e, _ in members}
  classifiers = [n for n, r in roles.items() if r == "classifier"]
  outputs = {"probabilities": {"combine": "mean", "members": [top]},
             "mask": top if roles[top] in MASK_ROLES else None,
             "gradcam": classifiers[0] if classifiers else None,
             "detections": top if roles[top] == "detector" else None}
  if jax.process_index() == 0:
    write(out, members, outputs, threshold=float(config.eval.threshold),
                 meta={"exported_from": str(workdir.absolute()), "model": config.model.name, "task": config.task.name},
                 inputs=list(names))
    print(f"Exported bundle ({len(members)} member{'s' if len(members) > 1 else ''}: "
          f"{', '.join(e['name'] for e, _ in members)}) to {out}", flush=True)
  sharding.sync("export bundle")
  return out
