"""The full (GPU-sized) experiment configs construct: every stage's config, task, optimizer and model, abstractly.

No training and no data: the models are built with nnx.eval_shape, so a typo
in a full config (a model option, a split, a fold count) fails here.
"""
import functools
import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import rsna_cascade, strong_vs_weak
from ich_jax import experiments
from ich_jax import LABELS, models
from ich_jax.data import folds, slice_plan
from ich_jax.train import optimizer, sharding, tasks


@functools.lru_cache(maxsize=None)
def _abstract_model(name: str, in_channels: int, options: str) -> nnx.Module:
  return nnx.eval_shape(lambda: models.build(name, num_classes=len(LABELS), in_channels=in_channels,
                                             rngs=nnx.Rngs(0), **json.loads(options)))


def _model(config, in_channels: int) -> nnx.Module:
  return _abstract_model(config.model.name, in_channels, json.dumps(config.model.get("options", {}).to_dict()))


def _common(config) -> None:
  tasks.build(config.task)
  optimizer.build(config.optimizer, 1000)
  assert config.train.batch_size % 8 == 0          # divisible over 8 devices (sharding.check_batch_size)
  sharding.check_batch_size(config.train.batch_size)
  folds.parse_split(config.dataset.train_split), folds.parse_split(config.dataset.eval_split)


def _check_sequence(stage_config, cnn: nnx.Module) -> None:
  """seq_gru_1 reads the CNN's pooled features, seq_gru_2 one probability set per export: shapes agree."""
  exports = len(stage_config.dataset.exports)
  channels = cnn.num_features if stage_config.task.inputs == "features" else exports
  _check_forward(stage_config.model.name, channels, json.dumps(stage_config.model.options.to_dict()),
                 stage_config.task.inputs)


@functools.lru_cache(maxsize=None)
def _check_forward(name: str, channels: int, options: str, inputs: str) -> None:
  model = _abstract_model(name, channels, options)
  if inputs == "features":
    x = (jax.ShapeDtypeStruct((2, 24, channels), jnp.float32),)
  else:
    x = (jax.ShapeDtypeStruct((2, 24, channels, 6), jnp.float32), jax.ShapeDtypeStruct((2, 24), jnp.float32))
  graphdef, state = nnx.split(model)

  def forward(state, *x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return m(*x, jnp.ones((2, 24), bool))

  assert jax.eval_shape(forward, state, *x).shape == (2, 24, len(LABELS))


@pytest.mark.parametrize("arg", ["", "neighbours"])
def test_the_full_cascade_constructs(arg, tmp_path):
  config = rsna_cascade.get_config(arg)
  stages = experiments.stages(config, tmp_path)
  runs = {s.name: s.config for s in stages if s.config is not None}
  cnn_models = {}
  for b in config.experiment.backbones:
    # Seed 003 §2: 5 CNN folds, 10 folds for each sequence model.
    assert [n for n in runs if n.startswith(f"{b}/cnn_")] == [f"{b}/cnn_fold{k}" for k in range(5)]
    assert len([n for n in runs if n.startswith(f"{b}/seq2_")]) == 10
    for k in range(5):
      c = runs[f"{b}/cnn_fold{k}"]
      _common(c)
      assert c.dataset.train_split == f"train[fold!={k}/5]" and c.export.splits == [f"train[fold={k}/5]", "test"]
      slice_plan.from_config(c.data)
    model = cnn_models[b] = _model(c, slice_plan.num_channels(c.data))
    assert c.model.name == b and type(model).__name__ in ("ResNet", "DenseNet")
  for name, c in runs.items():
    if "/seq" in name:
      _common(c)
      assert c.dataset.kind == "series_features" and c.train.batch_size == 128 and c.data.train_length == 24
      _check_sequence(c, cnn_models[name.split("/")[0]])
  recipe = runs["densenet121/cnn_fold0"].data.recipe
  assert {o for o, _, _ in recipe} == ({-1, 0, 1} if arg else {0})


def test_the_full_strong_vs_weak_constructs(tmp_path):
  config = strong_vs_weak.get_config()
  stages = experiments.stages(config, tmp_path)
  assert [s.name for s in stages][-2:] == ["report", "external"]
  # Every run also exports the full config's external set (300 other phantom patients).
  assert {tuple(e["config"] for e in s.config.export.external) for s in stages[:-2]} == {("small_dev256",)}
  stages = stages[:-1]
  for s in stages[:-1]:
    _common(s.config)
    task = tasks.build(s.config.task)
    assert (task.saliency_loss_weight > 0) == s.name.endswith("/strong")
    model = _model(s.config, slice_plan.num_channels(s.config.data))
    assert hasattr(model, "features_map") and hasattr(model, "classify")  # what the saliency loss needs
    assert slice_plan.num_channels(s.config.data) == 4                       # seed 000 §2.1.4's four channels
  assert {s.config.model.name for s in stages[:-1]} == set(config.experiment.backbones)


@pytest.mark.parametrize("module,arg", [("weighted_ensemble", ""), ("physionet_patch_unet", ""),
                                        ("physionet_patch_unet", "physionet:paper_patches")])
def test_the_full_segmentation_experiments_construct(module, arg, tmp_path):
  import importlib

  from ich_jax.train import loop

  config = importlib.import_module(f"configs.{module}").get_config(arg)
  stages = experiments.stages(config, tmp_path)
  assert stages[-1].name == "report"
  runs = [s for s in stages if s.config is not None]
  for s in runs:
    if s.name.endswith("/full_unet"):
      # Seed 002 §6: the full-slice U-Net's mini-batch of 2, which only divides over one or two devices.
      assert s.config.train.batch_size == 2
      s.config.train.batch_size = 8
    _common(s.config)
    slice_plan.from_config(s.config.data)
    _model(s.config, loop.input_module(s.config).in_channels(s.config))
  if module == "weighted_ensemble":
    # Seed 000 §2.2: five base models on the four-channel input, five weight models on their maps.
    assert sum(s.config.model.name == "inception_unet" and not s.name.startswith("oof/") for s in runs) == 5
    # ... and each again on 5 folds of the training split, for the weight models' out-of-fold maps.
    assert sum(s.config.model.name == "inception_unet" and s.name.startswith("oof/") for s in runs) == 25
    assert {slice_plan.num_channels(s.config.data) for s in runs} == {4}
    assert [len(s.config.dataset.exports) for s in runs if s.config.model.name == "ensemble_weights"] == [2, 3, 3, 3, 5]
  else:
    # Seed 002 §6: five rounds; the patch U-Net's windows are the data's and the stitching's.
    assert len([s for s in stages if s.name.endswith("/threshold")]) == 5
    patch = [s.config for s in runs if s.name.endswith("/patch_unet")]
    assert len(patch) == 5 and {(c.task.patch, c.task.stride) for c in patch} == {
        (c.data.patch.size, c.data.patch.stride) for c in patch} == {(160, 80) if arg else (32, 16)}
