"""The generic training loop: one for every task, model and dataset.

config → data source + model + task + optimizer → jit-compiled, data-parallel
train step → periodic atomic checkpoints (train state and input-iterator
state) → evaluation. Rerunning the same command after a crash resumes from the
last checkpoint and ends with the same params as an uninterrupted run; rerunning
it with a config that changes the run is refused (config_record).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ich_jax import LABELS, models
from ich_jax.data import base_maps, patches, pipeline, stage_exports
from ich_jax.train import checkpoint, config_record, optimizer, selection, sharding, summary, tasks

log = logging.getLogger("ich_jax.train")


@dataclasses.dataclass
class Experiment:
  """Everything a config builds that is not data: model definition, task, optimizer, mesh."""

  config: Any
  mesh: jax.sharding.Mesh
  task: tasks.Task
  tx: optax.GradientTransformation
  graphdef_train: nnx.GraphDef
  graphdef_eval: nnx.GraphDef
  total_steps: int
  # Applied to each training batch inside the jitted step before the task sees
  # it (the data module's optional `train_finish`, e.g. the on-device warp); None: nothing.
  finish: Any = None

  @property
  def train_keys(self) -> tuple[str, ...]:
    """The training batch fields placed on the devices."""
    keys = self.task.batch_keys
    return keys if self.finish is None else self.finish.host_keys(keys)

  def init_state(self) -> dict:
    """Fresh train state, replicated over the mesh."""
    model = _build_model(self.config)
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
             "opt_state": self.tx.init(params)}
    return jax.device_put(state, sharding.replicated(self.mesh))

  def abstract_state(self) -> dict:
    """Shapes, dtypes and shardings of the train state without computing it (restore target)."""
    abstract = jax.eval_shape(self.init_state)
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract)


def input_module(config):
  """The data module for `config.dataset.kind`: "slices" (default; ich_jax.data.pipeline),
  "series_features" (ich_jax.data.stage_exports: whole series of exported stage-1 outputs),
  "base_maps" (ich_jax.data.base_maps: slices with exported base segmentation maps) or
  "patches" (ich_jax.data.patches: windows of slices for training, whole slices for evaluation).

  Each provides ensure_ready(dataset_config), open_split(dataset_config, split),
  train_iterator(source, config.data, ...), eval_batches(source, config.data, ...)
  and in_channels(config), the model's input size; optionally train_finish(config)
  (None, or a jittable batch → batch with `host_keys(task_keys)`, see Experiment.finish).
  """
  kinds = {"slices": pipeline, "series_features": stage_exports, "base_maps": base_maps, "patches": patches}
  kind = config.dataset.get("kind", "slices")
  if kind not in kinds:
    raise ValueError(f"config dataset.kind={kind!r}; expected one of {sorted(kinds)}")
  return kinds[kind]


def model_options(config) -> dict:
  """`models.build` options of `config.model`: its `options`, plus `preprocessing` from
  `model.pretrained_preprocessing` (the input normalisation its pretrained weights expect)."""
  options = dict(config.model.get("options", {}))
  if config.model.get("pretrained_preprocessing"):
    options["preprocessing"] = config.model.pretrained_preprocessing
  return options


def _build_model(config) -> nnx.Module:
  # Outputs default to the six labels; a segmentation model's are its maps (config.model.num_classes).
  return models.build(config.model.name, num_classes=int(config.model.get("num_classes", len(LABELS))),
                      in_channels=input_module(config).in_channels(config),
                      rngs=nnx.Rngs(config.seed), **model_options(config))


def initial_weights(config) -> str:
  """Where a run's weights start, in words (printed at a fresh start, and in metrics.json and report.md)."""
  m = config.model
  if m.get("pretrained"):
    return (f"pretrained: {m.pretrained} (first_conv_rule {m.get('first_conv_rule', 'mean')!r}, "
            f"preprocessing {m.get('pretrained_preprocessing')!r})")
  if m.get("init_from"):
    return f"initialised from the run in {m.init_from}"
  from ich_jax.models import weight_files

  if m.name in weight_files.BINDERS and config.dataset.name != "synthetic_ich":
    return (f"FROM SCRATCH: no config.model.pretrained, so {m.name} starts from random weights while the seed "
            f"papers fine-tune ImageNet weights ({weight_files.PUBLISHED[m.name]}; docs/models.md)")
  return "from scratch (random initialisation)"


# Jitted steps by what they compile from. Stages of one experiment (ich_jax.experiments) build the same
# model, task and optimizer several times (seed 000's five base U-Nets); each would trace and compile its
# train step again (~15 s on a 2-core CPU for a smoke U-Net), so equal steps are built once per process.
_STEPS: dict[tuple, Callable] = {}
_MAX_STEPS = 16


def _step_key(exp: Experiment, method: str, *parts) -> tuple:
  c = exp.config
  # Where the initial weights come from does not change what compiles. The task's method itself is in
  # the key, so a step never outlives a change of the code it traced (a test's monkeypatched loss).
  model = {k: v for k, v in c.model.to_dict().items() if k not in ("init_from", "pretrained", "first_conv_rule")}
  return (json.dumps(model, sort_keys=True, default=str), input_module(c).in_channels(c),
          json.dumps(c.task.to_dict(), sort_keys=True, default=str), type(exp.task),
          getattr(type(exp.task), method), exp.mesh.devices.shape, tuple(d.id for d in exp.mesh.devices.flat),
          method, *parts)


def _cached_step(key: tuple, build: Callable[[], Callable]) -> Callable:
  if key not in _STEPS:
    if len(_STEPS) >= _MAX_STEPS:
      _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key] = build()
  return _STEPS[key]


def make_experiment(config) -> Experiment:
  sharding.check_batch_size(config.train.batch_size)
  task = tasks.build(config.task)
  total_steps = int(config.train.num_steps)
  tx = optimizer.build(config.optimizer, total_steps)
  model = nnx.eval_shape(lambda: _build_model(config))
  model.train()
  graphdef_train = nnx.graphdef(model)
  model.eval()
  graphdef_eval = nnx.graphdef(model)
  finish = getattr(input_module(config), "train_finish", lambda config: None)(config)
  return Experiment(config, sharding.data_mesh(), task, tx, graphdef_train, graphdef_eval, total_steps, finish)


def make_train_step(exp: Experiment):
  """jit(state, batch) → (state, metrics), data-parallel, donating the old state (one per distinct
  model, task, optimizer, on-device input finish and mesh in a process)."""
  key = _step_key(exp, "loss", json.dumps(exp.config.optimizer.to_dict(), sort_keys=True, default=str),
                  exp.total_steps, _finish_key(exp))
  return _cached_step(key, lambda: _build_train_step(exp))


def _finish_key(exp: Experiment) -> str | None:
  # The on-device finish (warp, windows, resize) is traced into the train step: its data config is part of it.
  if exp.finish is None:
    return None
  return json.dumps(exp.config.data.to_dict(), sort_keys=True, default=str)


def _build_train_step(exp: Experiment):
  task, tx, graphdef, finish = exp.task, exp.tx, exp.graphdef_train, exp.finish

  def train_step(state, batch):
    if finish is not None:
      batch = finish(batch)

    def loss_fn(params, model_state):
      # model_state (BatchNorm statistics, RNG counters) enters as an argument so
      # its Variables belong to this trace and the forward pass may update them.
      model = nnx.merge(graphdef, params, model_state, copy=True)
      loss, metrics = task.loss(model, batch)
      return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["model_state"])
    # `value`: the loss, for a schedule that anneals on plateaus (optimizer.build).
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"], value=loss)
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    scale = optimizer.plateau_scale(opt_state)
    if scale is not None:
      metrics["lr_scale"] = jnp.asarray(scale, jnp.float32)
    new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state, "opt_state": opt_state}
    return new_state, metrics

  rep, data = sharding.replicated(exp.mesh), sharding.batch_sharding(exp.mesh)
  return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_predict_step(exp: Experiment, method: str = "predict"):
  """jit(state, batch) → the task's predictions (`method`: "predict", or "export"), in eval mode."""
  return _cached_step(_step_key(exp, method), lambda: _build_predict_step(exp, method))


def _build_predict_step(exp: Experiment, method: str):
  task_fn, graphdef = getattr(exp.task, method), exp.graphdef_eval

  def predict_step(state, batch):
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    return task_fn(model, batch)

  return jax.jit(predict_step, in_shardings=(sharding.replicated(exp.mesh), sharding.batch_sharding(exp.mesh)),
                 out_shardings=sharding.batch_sharding(exp.mesh))


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)


def train(config, workdir: str | pathlib.Path, *, allow_config_change: bool = False) -> tuple[Experiment, dict]:
  """Trains to `config.train.num_steps`, resuming from `workdir`'s checkpoints; returns the final state.

  First `config` is recorded in `workdir`/config.json; a config that differs from the one recorded there
  in keys that change the run is refused unless `allow_config_change` (config_record).
  """
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  # Before any work: resuming must not continue another config's weights unnoticed. The software and data
  # that train are recorded with it (config_record.PROVENANCE).
  config_record.record(workdir, config, at_step=ckpt.latest_step or 0, allow_change=allow_config_change,
                       write=is_main, provenance=config_record.run_provenance(config) if is_main else None)
  data = input_module(config)
  if is_main:
    data.ensure_ready(config.dataset)
  sharding.sync("dataset built")
  exp = make_experiment(config)
  source = data.open_split(config.dataset, config.dataset.train_split)
  batch_iter = data.train_iterator(
      source, config.data, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  if ckpt.latest_step is not None:
    state, start = ckpt.restore(exp.abstract_state(), batch_iter)
    log.info("resuming from step %d (checkpoint in %s)", start, workdir / "checkpoints")
    print(f"Resuming from step {start} of {exp.total_steps}", flush=True)
  else:
    state, start = exp.init_state(), 0
    weights = initial_weights(config)
    if weights.startswith("FROM SCRATCH"):
      log.warning("%s", weights)
    if is_main:
      print(f"Initial weights: {weights}", flush=True)
    if config.model.get("init_from"):
      state = load_pretrained(exp, state, config.model.init_from)
    if config.model.get("pretrained"):
      state = load_weights_file(exp, state)
  best = _best_checkpoint(config, workdir, exp, state, start) if config.train.get("select_every", 0) else None
  writer = summary.SummaryWriter(workdir, enabled=is_main, start_step=start)
  step_fn = make_train_step(exp)
  data_sharding = sharding.batch_sharding(exp.mesh)
  bar = _progress(exp.total_steps, start, is_main and config.train.get("progress", True))
  pending: list[dict] = []
  for step in range(start, exp.total_steps):
    batch = sharding.put_batch(next(batch_iter), data_sharding, exp.train_keys)
    state, metrics = step_fn(state, batch)
    pending.append(metrics)
    done = step + 1
    final = done == exp.total_steps
    save_now = done % config.train.checkpoint_every == 0 or final
    if save_now:
      # Never checkpoint a diverged state: a rerun would resume into NaNs.
      losses = np.array([jax.device_get(m["loss"]) for m in pending])
      if not np.isfinite(losses).all():
        raise FloatingPointError(f"loss is {losses[~np.isfinite(losses)][0]} by step {done}; last checkpoint "
                                 f"(finite): step {ckpt.latest_step} in {workdir / 'checkpoints'}")
    if done % config.train.log_every == 0 or final:
      means = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
      if not np.isfinite(means["loss"]):
        raise FloatingPointError(f"loss is {means['loss']} at step {done}; last checkpoint (finite): "
                                 f"step {ckpt.latest_step} in {workdir / 'checkpoints'}")
      means["learning_rate"] = float(optimizer.schedule(config.optimizer, exp.total_steps)(done))
      if "lr_scale" in means:
        # A plateau schedule: the rate in effect at this step (its scale is the last step's).
        means["learning_rate"] *= float(jax.device_get(pending[-1]["lr_scale"]))
      writer.scalars(done, means)
      pending = []
      if bar is not None:
        bar.set_postfix(loss=f"{means['loss']:.4f}")
    if bar is not None:
      bar.update(1)
    if save_now:
      ckpt.save(done, state, batch_iter)
    if best is not None:
      best.after_step(done, state, saved=ckpt.latest_step)
  if bar is not None:
    bar.close()
  ckpt.close()
  if best is not None:
    best.close()
  writer.close()
  return exp, state


def _best_checkpoint(config, workdir: pathlib.Path, exp: Experiment, state, start: int):
  """Validation every `config.train.select_every` steps, keeping the best state (ich_jax.train.selection)."""
  source = input_module(config).open_split(config.dataset, selection.validation_split(config, workdir))

  def score(state) -> float:
    return selection.jaccard_on_blood(predict_split(exp, state, source, batch_size=config.eval.batch_size,
                                                    fields=selection.FIELDS))

  return selection.BestCheckpoint(workdir, int(config.train.select_every), score, state, start=start,
                                  total=exp.total_steps)


def restore_for_eval(config, workdir: str | pathlib.Path, step: int | None = None) -> tuple[Experiment, dict, int]:
  """The experiment and a checkpointed state of a workdir (`step`, default the newest; a step no longer
  among the kept checkpoints may be the best validation's, selection.BEST_CHECKPOINTS)."""
  exp = make_experiment(config)
  directory = pathlib.Path(workdir) / "checkpoints"
  if step is not None and (pathlib.Path(workdir) / selection.BEST_CHECKPOINTS).is_dir():
    best = checkpoint.Checkpointer(pathlib.Path(workdir) / selection.BEST_CHECKPOINTS, keep=None)
    directory = directory if step not in best.all_steps else pathlib.Path(workdir) / selection.BEST_CHECKPOINTS
    best.close()
  ckpt = checkpoint.Checkpointer(directory, keep=config.train.keep_checkpoints)
  state, step = ckpt.restore(exp.abstract_state(), step=step)
  ckpt.close()
  return exp, state, step


def checkpoint_steps(config, workdir: str | pathlib.Path) -> list[int]:
  """The steps of a workdir's kept checkpoints, oldest first."""
  ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints)
  steps = ckpt.all_steps
  ckpt.close()
  return steps


def read_config(workdir: str | pathlib.Path):
  """The config a run trained with (its workdir's config.json, written by `train`; without the record of
  its changes and provenance, config_record.HISTORY and PROVENANCE), JSON lists back as the tuples configs hold (model options such as
  `widths`)."""
  from ml_collections import ConfigDict

  recorded, _ = config_record.read(workdir)
  if recorded is None:
    raise FileNotFoundError(f"{pathlib.Path(workdir) / config_record.RECORD}: no config.json; a run trained by "
                            "launch.py or ich_jax.experiments has one")
  return ConfigDict(config_record.as_tuples(recorded))


def load_pretrained(exp: Experiment, state: dict, workdir: str | pathlib.Path) -> dict:
  """`state` with the model's weights partly taken from another run (`config.model.init_from`): the model's
  `load_pretrained(source_model)` decides which (seed 000 Model 2: the Inception U-Net takes the encoder of
  a subtype-pretrained `inception_unet_encoder`). The optimizer starts afresh."""
  model = nnx.merge(exp.graphdef_train, state["params"], state["model_state"])
  if not hasattr(model, "load_pretrained"):
    raise ValueError(f"config model.init_from={str(workdir)!r}: model {exp.config.model.name!r} defines no "
                     "load_pretrained")
  src_config = read_config(workdir)
  src_exp, src_state, src_step = restore_for_eval(src_config, workdir)
  source = nnx.merge(src_exp.graphdef_eval, src_state["params"], src_state["model_state"])
  model.load_pretrained(source)
  log.info("initialised from %s (step %d, model %s)", workdir, src_step, src_config.model.name)
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  new = {"step": state["step"], "params": params, "model_state": model_state, "opt_state": exp.tx.init(params)}
  return jax.device_put(new, sharding.replicated(exp.mesh))


def load_weights_file(exp: Experiment, state: dict) -> dict:
  """`state` with the model's weights from the file `config.model.pretrained` (ich_jax.models.weight_files:
  all or nothing; a head for another class count stays fresh, a first convolution for other input channels
  is adapted by `config.model.first_conv_rule`). The optimizer starts afresh."""
  from ich_jax.models import weight_files

  c = exp.config
  model = nnx.merge(exp.graphdef_train, state["params"], state["model_state"])
  report = weight_files.load(model, c.model.name, c.model.pretrained,
                             first_conv_rule=c.model.get("first_conv_rule", "mean"))
  log.info("pretrained weights: %s", report.summary())
  if jax.process_index() == 0:
    print(f"Pretrained weights: {report.summary()}", flush=True)
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  new = {"step": state["step"], "params": params, "model_state": model_state, "opt_state": exp.tx.init(params)}
  return jax.device_put(new, sharding.replicated(exp.mesh))


def predict_split(exp: Experiment, state: dict, source, *, batch_size: int, method: str = "predict",
                  fields: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
  """Predictions and metadata for every record of `source`, gathered from all processes, in record order.

  `fields`: the batch's metadata to keep (default: all but the inputs). Where
  the predictions carry `slice_valid` (a series per record), the result has
  one row per valid slice (`stage_exports.explode`).
  """
  predict_step = make_predict_step(exp, method)
  data_sharding = sharding.batch_sharding(exp.mesh)
  keys = exp.task.input_keys
  keep = None if fields is None else set(fields) | {"valid", "record_index"}
  outputs: dict[str, list] = {}
  for local in input_module(exp.config).eval_batches(source, exp.config.data, batch_size=batch_size,
                                                     process_index=jax.process_index(),
                                                     process_count=jax.process_count()):
    preds = predict_step(state, sharding.put_batch(local, data_sharding, keys))
    local_preds = {k: sharding.local_rows(v) for k, v in preds.items()}
    meta = {k: v for k, v in local.items() if k not in keys and (keep is None or k in keep)}
    for k, v in {**meta, **local_preds}.items():
      outputs.setdefault(k, []).append(np.asarray(v))
  gathered = sharding.gather_hosts({k: np.concatenate(v) for k, v in outputs.items()})
  valid = gathered.pop("valid").astype(bool)
  gathered = {k: v[valid] for k, v in gathered.items()}
  order = np.argsort(gathered["record_index"], kind="stable")
  gathered = {k: v[order] for k, v in gathered.items()}
  return stage_exports.explode(gathered) if "slice_valid" in gathered else gathered
