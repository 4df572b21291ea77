"""Exports of a trained run: stage outputs for the next training stage, or a model bundle for prediction.

  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode export_features
  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode export [--out DIR]

`export_bundle` writes a self-contained model bundle (`ich_jax.bundle`) from
the newest checkpoint; a run that trained on other runs' exports (seed 003's
sequence models, seed 000's weight model: `config.dataset.exports`) brings
those runs along as members, read from their workdirs' config.json and
checkpoints, so the bundle is the whole cascade.

`export_features` restores the workdir's newest checkpoint and writes `<workdir>/export/<split>/`
(format: `ich_jax.data.stage_exports`) for each split in `config.export.splits`
(default: the train and eval splits). A slice classifier exports pooled
features and probabilities (its task's `export`); a sequence model exports
probabilities, the input of the next stage (seed 003 Fig. 1); a segmentation
model exports slice probabilities and its blood-probability maps, the input of
seed 000's ensemble weight model (`ich_jax.data.base_maps`).
"""
from __future__ import annotations

import pathlib
import re

import jax

from ich_jax import LABELS, atomic, bundle
from ich_jax.data import stage_exports
from ich_jax.train import evaluate, loop, sharding

# dataset.kind of runs that read other runs' exports (their members' inputs).
_STAGED_KINDS = ("series_features", "base_maps")


def export_features(config, workdir: str | pathlib.Path, *, exp=None, state=None,
                    step: int | None = None) -> list[pathlib.Path]:
  """Writes each split's export of `state` (default: the workdir's checkpoint `step`, else its newest); returns
  the folders."""
  workdir = pathlib.Path(workdir)
  if state is None:
    exp, state, step = loop.restore_for_eval(config, workdir, step)
  if not hasattr(exp.task, "export"):
    raise ValueError(f"config task.name={config.task.name!r} has no export (its task defines no `export`)")
  export_config = config.get("export", {})
  splits = list(export_config.get("splits", [config.dataset.train_split, config.dataset.eval_split]))
  data = loop.input_module(config)
  written = []
  for split in dict.fromkeys(splits):
    source = data.open_split(config.dataset, split)
    rows = loop.predict_split(exp, state, source, batch_size=config.eval.batch_size, method="export",
                              fields=stage_exports.ID_FIELDS + stage_exports.EXTRA_FIELDS)
    directory = stage_exports.export_dir(workdir, split)
    if jax.process_index() == 0:
      meta = {"split": split, "source": {"workdir": str(workdir.absolute()), "step": int(step),
                                         "model": config.model.name, "task": config.task.name,
                                         "dataset": f"{config.dataset.name}/{config.dataset.config}"}}
      stage_exports.write_export(directory, rows, meta)
      print(f"Exported {split}: {len(rows['probabilities'])} slices to {directory}", flush=True)
    sharding.sync(f"export {split}")
    written.append(directory)
  return written


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
  Outputs: the run's own probabilities; its mask if it segments; Grad-CAM from
  the first classifier member.
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
             "in_channels": int(data.in_channels(cfg)), "options": cfg.model.get("options", {})}
    role = bundle.ROLES.get(cfg.task.name)
    name = _member_name(run, set(names.values()))
    entry, arrays, _ = bundle.member_entry(
        name, model=model, task=cfg.task, state=state,
        data=bundle.data_entry(cfg.data) if role in bundle.SLICE_ROLES else None, inputs=inputs,
        source={"workdir": str(key), "step": int(step), "dataset": f"{cfg.dataset.name}/{cfg.dataset.config}"})
    members.append((entry, arrays))
    names[key] = name
    return name

  top = add(config, workdir, ())
  roles = {e["name"]: e["role"] for e, _ in members}
  classifiers = [n for n, r in roles.items() if r == "classifier"]
  outputs = {"probabilities": {"combine": "mean", "members": [top]},
             "mask": top if roles[top] in bundle.MASK_ROLES else None,
             "gradcam": classifiers[0] if classifiers else None}
  if jax.process_index() == 0:
    bundle.write(out, members, outputs, threshold=float(config.eval.threshold),
                 meta={"exported_from": str(workdir.absolute()), "model": config.model.name, "task": config.task.name},
                 inputs=list(names))
    print(f"Exported bundle ({len(members)} member{'s' if len(members) > 1 else ''}: "
          f"{', '.join(e['name'] for e, _ in members)}) to {out}", flush=True)
  sharding.sync("export bundle")
  return out
