"""The one entry point: train or evaluate an experiment config (installed as the command `ich-jax-train`).

  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  python launch.py --config configs/quickstart.py:smoke --workdir W --mode eval
  python launch.py --config configs/quickstart.py --config.train.num_steps=100 ...
  python launch.py --config configs/quickstart.py --workdir W --mode export_features   # stage outputs per series
  python launch.py --config configs/quickstart.py --workdir W --mode export [--out DIR]  # model bundle (ich_jax.bundle)
  python launch.py --config configs/rsna_cascade.py --workdir W        # an experiment: its stages, then its report
  python launch.py --config configs/rsna_cascade.py --workdir W --mode export [--out DIR]  # its final stage's bundle
  python launch.py --config configs/quickstart.py --sweep configs/quickstart_sweep.py --workdir W   # one run per entry

Multi-host: start one process per host with the same flags plus
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from ich_jax import atomic, extras, host_malloc, lock, xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export_features", "export"],
                          "train (then evaluate), eval from the newest checkpoint, export_features: the newest "
                          "checkpoint's per-slice features and predictions of every series "
                          "(ich_jax.data.stage_exports), or export: a self-contained model bundle for "
                          "`python -m ich_jax.predict` (ich_jax.bundle).")
_OUT = flags.DEFINE_string("out", None, "--mode export: the bundle folder (default <workdir>/bundle).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir (or an experiment's stage) whose config.json records another "
    "config, with keys that change the run (dataset, model, learning rate, ...): the change is recorded in "
    "config.json's config_history. Without it such a rerun is refused; changes that do not affect the run "
    "(logging, checkpoint cadence, evaluation) are always accepted and recorded (ich_jax/train/config_record.py).")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "Sweep file (path[:arg]) whose get_sweep(arg) lists dicts of config overrides: each entry "
    "trains and evaluates (or runs the experiment) in WORKDIR/<name>, finished ones are skipped, then one table "
    "(WORKDIR/sweep.md). See ich_jax/experiments/sweep.py.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _init_distributed() -> None:
  import jax

  if _NUM_PROCESSES.value and _NUM_PROCESSES.value > 1:
    # CPU collectives across processes need an implementation (gloo ships with
    # jaxlib); the setting only concerns the CPU client, so GPUs/TPUs ignore it.
    # It must precede any backend query, hence no jax.default_backend() here.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv) -> None:
  del argv
  # Our progress at INFO; libraries (Orbax's per-save chatter) at WARNING.
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("ich_jax").setLevel(logging.INFO)
  # Before JAX starts a backend: XLA reads its flags once.
  xla_flags.apply()
  # Input batches reuse freed memory instead of fresh pages (docs/PERFORMANCE.md, Input pipeline).
  host_malloc.apply()
  _init_distributed()
  import jax

  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  allow = _ALLOW_CONFIG_CHANGE.value
  several = bool(_SWEEP.value) or config.get("experiment") is not None
  if several and _MODE.value != "train" and (_SWEEP.value or _MODE.value != "export"):
    raise app.UsageError(f"--mode={_MODE.value}: sweeps and experiment configs run with --mode=train "
                         "(finished stages are skipped; each stage folder is an ordinary run folder); an "
                         "experiment config also with --mode=export (the bundle of its final stage)")
  # One writer per run folder: a second launch on it (by mistake) is refused with the first one's host and pid
  # (ich_jax.lock; a killed run's lock is released by the system). Export only reads the run (its bundle
  # folder has a lock of its own).
  from ich_jax.train import config_record

  try:
    with contextlib.ExitStack() as held:
      if jax.process_index() == 0 and _MODE.value != "export":
        held.enter_context(lock.FolderLock(workdir, what="run folder"))
      _run(config, workdir, several=several, allow=allow)
  except (lock.Locked, atomic.NotOurs, config_record.ConfigChanged) as e:
    # Refusals that protect data: the message names the folder, holder or keys; a traceback adds nothing.
    raise SystemExit(f"error: {e}") from None


def _run(config, workdir: pathlib.Path, *, several: bool, allow: bool) -> None:
  import jax

  from ich_jax.train import evaluate, loop

  # config.json is the record of what was trained (bundle export --run and the experiments read it), written
  # by loop.train after comparing it with the one there (config_record). Evaluating or exporting with other
  # overrides records them beside it, never over it.
  if jax.process_index() == 0 and _MODE.value != "train":
    workdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(workdir / f"config.{_MODE.value}.json", config.to_json_best_effort(indent=2))
  if several and _MODE.value == "train":
    # Several runs of the one loop, each in its own folder (ich_jax.experiments), checked there: the root's
    # config.json records the whole config and its changes (a sweep entry or a fold added is not an error).
    from ich_jax import experiments
    from ich_jax.experiments import sweep
    from ich_jax.train import config_record

    config_record.record(workdir, config, at_step=0, allow_change=True, write=jax.process_index() == 0,
                         how="sweep or experiment root: each stage is checked in its own folder")
    if _SWEEP.value:
      sweep.run_sweep(config, _SWEEP.value, workdir, allow_config_change=allow)
    else:
      experiments.run(config, workdir, allow_config_change=allow)
  elif _MODE.value == "train":
    exp, state = loop.train(config, workdir, allow_config_change=allow)
    evaluate.evaluate(config, workdir, exp=exp, state=state, step=config.train.num_steps)
  elif _MODE.value == "eval":
    evaluate.evaluate(config, workdir)
  elif _MODE.value == "export_features":
    from ich_jax.train import export

    export.export_features(config, workdir)
  else:
    from ich_jax.bundle import export

    export.export_bundle(config, workdir, _OUT.value)


# Flags whose value is a config file (path[:arg]).
CONFIG_FLAGS = ("--config", "--sweep")


def packaged_config(value: str) -> str:
  """A `--config`/`--sweep` value whose file is not here → the installed `configs` package's file of that name.

  So `ich-jax-train --config configs/quickstart.py` (or `--config quickstart`) works from any folder once the
  package is installed; a file that exists here is always the one used.
  """
  file, sep, arg = value.partition(":")
  if not file or pathlib.Path(file).exists():
    return value
  import configs

  root = pathlib.Path(configs.__file__).parent
  name = pathlib.Path(file).name
  for candidate in (root / name, root / f"{name}.py"):
    if candidate.is_file():
      return f"{candidate}{sep}{arg}"
  return value  # config_flags reports the missing file by name


def with_packaged_configs(argv: list[str]) -> list[str]:
  """`argv` with each config-file flag's value resolved by `packaged_config` (`--flag V` and `--flag=V`)."""
  out = list(argv)
  for i, a in enumerate(out):
    flag, eq, value = a.partition("=")
    if flag in CONFIG_FLAGS and eq:
      out[i] = f"{flag}={packaged_config(value)}"
    elif a in CONFIG_FLAGS and i + 1 < len(out):
      out[i + 1] = packaged_config(out[i + 1])
  return out


def cli() -> None:
  """`ich-jax-train` and `python launch.py`: refuses without the [train] extra, then runs `main`."""
  extras.require_training("ich-jax-train (launch.py)")
  app.run(main, argv=with_packaged_configs(sys.argv))


if __name__ == "__main__":
  cli()
