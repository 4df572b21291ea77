"""A run folder's model bundle: this run and, recursively, the runs whose exports it trained on, as members.

  python launch.py --config C --workdir W --mode export [--out DIR]
  python -m ich_jax.bundle export --run W/STAGE --out DIR
  python -m ich_jax.bundle export --run W --out DIR         # an experiment's root: its final stage

`export_bundle` writes a self-contained model bundle from the run's selected
(else newest) checkpoint; a run that trained on other runs' exports (seed
003's sequence models, seed 000's weight model: `config.dataset.exports`)
brings those runs along as members, read from their workdirs' config.json and
checkpoints, so the bundle is the whole cascade. A combined stage of seed 003's
cascade (B/cnn, B/seq1, B/seq2, ensemble: its `combined.json`,
`rsna_cascade.MEAN_RECORD`) is a mean member over its runs, as its evaluated
split is the mean over their exports: so the K-fold cascade (backbones × CNN
folds → seq_gru_1 folds → seq_gru_2 folds → the mean over backbones) is one
bundle that computes what the cascade's evaluation computes.
"""
from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

import jax

from ich_jax import LABELS, atomic
from ich_jax.bundle.format import MASK_ROLES, ROLES, SLICE_ROLES, data_entry, mean_entry, member_entry, write
from ich_jax.train import config_record, evaluate, loop, sharding

# dataset.kind of runs that read other runs' exports (their members' inputs).
_STAGED_KINDS = ("series_features", "base_maps")


def member_names(runs: Sequence[pathlib.Path]) -> dict[pathlib.Path, str]:
  """Each run folder's member name: the shortest tail of its path that no other run's path ends with, joined
  by "." ("seq_gru_1"; "densenet121.cnn_fold0" where seed 003's backbones repeat the stage names), file-safe."""
  names: dict[pathlib.Path, str] = {}
  for run in runs:
    k = 1
    while k < len(run.parts) and any(r != run and r.parts[-k:] == run.parts[-k:] for r in runs):
      k += 1
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", ".".join(run.parts[-k:])) or "model"
    name, n = base, 2
    while name in names.values():
      name, n = f"{base}-{n}", n + 1
    names[run] = name
  return names


def _read_config(run: pathlib.Path):
  from ich_jax.experiments import rsna_cascade, runner

  if not (run / config_record.RECORD).is_file() and (run / runner.MARKER).is_file():
    raise FileNotFoundError(
        f"{run}: an experiment's host step ({runner.MARKER}) with neither {config_record.RECORD} nor "
        f"{rsna_cascade.MEAN_RECORD}: no model to export. A seed 003 combined stage finished before it wrote "
        f"{rsna_cascade.MEAN_RECORD}: delete its {runner.MARKER} and rerun the experiment (that stage alone reruns)")
  return loop.read_config(run)


def member_provenance(run: pathlib.Path, config) -> dict:
  """The provenance `run`'s config.json recorded in training (config_record.PROVENANCE); a run trained before it
  was recorded gets its dataset and config hash from `config`, and software None (not recorded)."""
  recorded = config_record.read_provenance(run)
  if recorded is not None:
    return recorded
  return {"software": None, "dataset": config_record.dataset_record(config),
          "config_hash": config_record.config_hash(config)}


def _final_stage(config, workdir: pathlib.Path) -> pathlib.Path:
  from ich_jax import experiments

  final = experiments.final_stage(config)
  if final is None:
    raise ValueError(f"config experiment.name={config.experiment.name!r} names no final stage to export; "
                     f"export one of its stages: --run {workdir}/STAGE")
  return workdir / final


def export_bundle(config, workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
  """Writes the model bundle of `workdir` (default `<workdir>/bundle`); returns its path.

  `config`: the run's config, None to read its config.json. An experiment's
  config (an `experiment` section: what `launch.py` records in the
  experiment's root) exports the experiment's final stage (`FINAL`: seed
  003's W/ensemble).

  Members: this run, and recursively every run in its `config.dataset.exports`
  (each once), inputs first; each at the checkpoint its run selected
  (`evaluate.select_checkpoint`, seed 002's best validation Jaccard), else its
  newest. A member keeps its run's task config, so a U-Net trained on windows
  (`task.patch`, `task.stride`) predicts stitched, as its evaluation did. A
  combined stage of seed 003 (`rsna_cascade.read_mean_record`) is a mean
  member over its runs, which join as members too.
  Each member's `source.provenance` is what its run's config.json recorded
  (`member_provenance`: the software that trained it, dataset, splits, config hash).
  Outputs: the run's own probabilities; its mask if it segments or detects
  (a detector's mask is the label map of its instance masks); its boxes if it
  detects; Grad-CAM from the first classifier member. The threshold: the run's
  `eval.threshold` (a combined stage's: the one its evaluation used).
  """
  from ich_jax.experiments import rsna_cascade

  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out) if out is not None else workdir / "bundle"
  # Before any checkpoint is read: `--out` equal to (or holding) the run folder would replace its checkpoints.
  atomic.check_output(out, "bundle", protected=[workdir])
  run = workdir
  if config is None and rsna_cascade.read_mean_record(workdir) is None:
    config = _read_config(workdir)
  if config is not None and config.get("experiment") is not None:
    run, config = _final_stage(config, workdir), None
  # The runs, inputs first: absolute folder → (folder, config or None for a mean, its mean record, input keys).
  runs: dict[pathlib.Path, tuple] = {}

  def visit(folder: pathlib.Path, cfg, chain: tuple) -> pathlib.Path:
    key = pathlib.Path(os.path.normpath(folder.expanduser().absolute()))   # W/B/cnn/../cnn_fold0 → W/B/cnn_fold0
    if key in runs:
      return key
    if key in chain:
      raise ValueError(f"config dataset.exports of {folder} leads back to itself: {[str(c) for c in chain]}")
    record = rsna_cascade.read_mean_record(folder)
    if record is not None:
      inputs = [visit(p, None, chain + (key,)) for p in record["parts"]]
    else:
      cfg = cfg if cfg is not None else _read_config(folder)
      inputs = ([visit(pathlib.Path(w), None, chain + (key,)) for w in cfg.dataset.exports]
                if cfg.dataset.get("kind", "slices") in _STAGED_KINDS else [])
    runs[key] = (folder, cfg, record, inputs)
    return key

  top = visit(run, config, ())
  names = member_names(list(runs))
  members: list[tuple[dict, dict | None]] = []
  for key, (folder, cfg, record, inputs) in runs.items():
    if record is not None:
      members.append((mean_entry(names[key], [names[i] for i in inputs], source={"workdir": str(key)}), None))
      continue
    _, state, step = loop.restore_for_eval(cfg, folder, evaluate.selected_step(folder))
    data = loop.input_module(cfg)
    model = {"name": cfg.model.name, "num_classes": int(cfg.model.get("num_classes", len(LABELS))),
             "in_channels": int(data.in_channels(cfg)), "options": loop.model_options(cfg)}
    role = ROLES.get(cfg.task.name)
    entry, arrays, _ = member_entry(
        names[key], model=model, task=cfg.task, state=state,
        data=data_entry(cfg.data) if role in SLICE_ROLES else None, inputs=[names[i] for i in inputs],
        source={"workdir": str(key), "step": int(step), "dataset": f"{cfg.dataset.name}/{cfg.dataset.config}",
                "provenance": member_provenance(folder, cfg)})
    members.append((entry, arrays))
  roles = {e["name"]: e["role"] for e, _ in members}
  classifiers = [n for n, r in roles.items() if r == "classifier"]
  name, (_, cfg, record, _) = names[top], runs[top]
  outputs = {"probabilities": {"combine": "mean", "members": [name]},
             "mask": name if roles[name] in MASK_ROLES else None,
             "gradcam": classifiers[0] if classifiers else None,
             "detections": name if roles[name] == "detector" else None}
  meta = ({"model": cfg.model.name, "task": cfg.task.name} if cfg is not None
          else {"mean_of": [names[i] for i in runs[top][3]]})
  if jax.process_index() == 0:
    write(out, members, outputs, threshold=float(cfg.eval.threshold if cfg is not None else record["threshold"]),
          meta={"exported_from": str(runs[top][0].absolute()), **meta}, inputs=list(runs))
    print(f"Exported bundle ({len(members)} member{'s' if len(members) > 1 else ''}: "
          f"{', '.join(e['name'] for e, _ in members)}) to {out}", flush=True)
  sharding.sync("export bundle")
  return out
