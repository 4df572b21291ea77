"""Exports of a trained run: stage outputs for the next training stage (a model bundle for prediction is
`ich_jax.bundle.export`).

  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode export_features

`export_features` restores the workdir's newest checkpoint and writes `<workdir>/export/<split>/`
(format: `ich_jax.data.stage_exports`) for each split in `config.export.splits`
(default: the train and eval splits), and `<workdir>/export/<key>/` for each
external test set in `config.export.external` (`ich_jax.data.external`: another
builder's split, read through its own builder; a sequence model reads the
upstream stages' `export/<key>/`). A slice classifier exports pooled
features and probabilities (its task's `export`); a sequence model exports
probabilities, the input of the next stage (seed 003 Fig. 1); a segmentation
model exports slice probabilities and its blood-probability maps, the input of
seed 000's ensemble weight model (`ich_jax.data.base_maps`).
"""
from __future__ import annotations

import pathlib

import jax

from ich_jax.data import external, stage_exports
from ich_jax.train import loop, sharding


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
  jobs = [(split, config.dataset, split, split) for split in dict.fromkeys(splits)]
  for s in external.from_dicts(export_config.get("external", ())):
    if data is stage_exports:
      # A sequence model's input for the set is its upstream stages' export of it.
      jobs.append((s.key, config.dataset, s.key, s.label))
    else:
      ds = external.dataset_config(config.dataset, s)
      data.ensure_ready(ds)
      jobs.append((s.key, ds, s.split, s.label))
  written = []
  for name, dataset, split, label in jobs:
    source = data.open_split(dataset, split)
    rows = loop.predict_split(exp, state, source, batch_size=config.eval.batch_size, method="export",
                              fields=stage_exports.ID_FIELDS + stage_exports.EXTRA_FIELDS)
    directory = stage_exports.export_dir(workdir, name)
    if jax.process_index() == 0:
      meta = {"split": label, "source": {"workdir": str(workdir.absolute()), "step": int(step),
                                         "model": config.model.name, "task": config.task.name,
                                         "dataset": f"{dataset.name}/{dataset.config}"}}
      stage_exports.write_export(directory, rows, meta)
      print(f"Exported {label}: {len(rows['probabilities'])} slices to {directory}", flush=True)
    sharding.sync(f"export {name}")
    written.append(directory)
  return written
