"""Experiments by name: a config with an `experiment` field runs as stages of the one loop.

`config.experiment.name` picks a module here. Each defines
  stages(config, root) -> list[runner.Stage]   the runs and host steps, in order, written in Python from the
                                               config's sections (their configs: `stage_configs`);
  FINAL                                        the stage whose folder holds the headline evaluation
                                               (metrics.json, predictions.csv), or None.
`launch.py --config C --workdir W` runs them (`run`), skipping finished stages. The runner, below this
registry, never imports it: it is handed `run` for a nested experiment (a sweep's entry is a whole experiment).
"""
from __future__ import annotations

import importlib
import pathlib

EXPERIMENTS = {
    "rsna_cascade": "ich_jax.experiments.rsna_cascade",      # seed 003: 2D CNN → two GRU models → ensemble
    "strong_vs_weak": "ich_jax.experiments.strong_vs_weak",  # seed 000 §2.1: slice labels vs saliency supervision
    "weighted_ensemble": "ich_jax.experiments.weighted_ensemble",        # seed 000 §2.2: five U-Nets, weight model
    "physionet_patch_unet": "ich_jax.experiments.physionet_patch_unet",  # seed 002: thresholds, full / patch U-Net
}


def module(config):
  name = config.experiment.name
  if name not in EXPERIMENTS:
    raise KeyError(f"config experiment.name={name!r} is not a known experiment; known: {', '.join(sorted(EXPERIMENTS))}")
  return importlib.import_module(EXPERIMENTS[name])


def stages(config, root) -> list:
  return module(config).stages(config, pathlib.Path(root))


def final_stage(config) -> str | None:
  return getattr(module(config), "FINAL", None)


def run(config, workdir, *, allow_config_change: bool = False) -> dict[str, str]:
  """Runs (or resumes) every stage of the experiment under `workdir`; returns their fingerprints.

  `allow_config_change`: see `runner.run_stage`."""
  from ich_jax.experiments import runner

  workdir = pathlib.Path(workdir)
  return runner.run_stages(stages(config, workdir), workdir, only=config.experiment.get("only", None) or None,
                           allow_config_change=allow_config_change, run_experiment=run)
