"""Exports of a trained run: stage outputs for the next training stage (a model bundle for prediction is
`ich_jax.bundle.export`).

  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode export_features

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

import jax

from ich_jax.data import stage_exports
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
