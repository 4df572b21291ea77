"""A run's start from a pretrained weight file (`config.model.pretrained`), and what it says about its weights."""
from __future__ import annotations

import numpy as np

from ich_jax.train import loop
from tests.models import pretrained_cases as pc


def test_fresh_state_takes_the_file_keeps_a_fresh_head_and_a_fresh_optimizer(smoke_config, tmp_path):
  ref = pc.load_ref("timm_mobilenetv2_100")
  path = tmp_path / "mobilenetv2_100.safetensors"
  pc.write_safetensors(path, ref["tensors"])
  cfg = smoke_config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.name = "mobilenet_v2"
    cfg.model.options = {}
    cfg.model.pretrained = str(path)
    cfg.model.pretrained_preprocessing = "imagenet"
  exp = loop.make_experiment(cfg)
  state = exp.init_state()
  loaded = loop.load_weights_file(exp, state)
  channels = loop.input_module(cfg).in_channels(cfg)
  stem = np.asarray(loaded["params"]["layers"][0]["conv"]["kernel"])
  rgb = pc.golden_tensor("conv_stem.weight", (32, 3, 3, 3)).transpose(2, 3, 1, 0)
  if channels == 3:
    np.testing.assert_array_equal(stem, rgb)
  else:   # the smoke recipe's channel count: the RGB kernel's mean on each, scaled by 3/C
    np.testing.assert_allclose(stem, np.repeat(rgb.mean(axis=2, keepdims=True), channels, axis=2) * 3 / channels,
                               rtol=1e-6)
  # The file's 10-class classifier does not fit six labels: the head is the fresh one.
  np.testing.assert_array_equal(np.asarray(loaded["params"]["head"]["kernel"]),
                                np.asarray(state["params"]["head"]["kernel"]))
  var = pc.golden_tensor("blocks.6.0.bn3.running_var", (320,))
  np.testing.assert_array_equal(np.asarray(loaded["model_state"]["layers"][17]["layers"][2]["norm"]["var"]), var)
  assert int(loaded["step"]) == 0
  # The model normalises its input as the weights expect (ImageNet mean/std), and bundles record it.
  assert loop.model_options(cfg)["preprocessing"] == "imagenet"
  assert loop.initial_weights(cfg).startswith(f"pretrained: {path}")


def test_a_real_dataset_without_weights_says_it_trains_from_scratch(smoke_config):
  cfg = smoke_config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.model.name = "densenet121"
    cfg.dataset.name = "rsna_ich"
  note = loop.initial_weights(cfg)
  assert note.startswith("FROM SCRATCH") and "densenet121.tv_in1k" in note
  with cfg.unlocked():
    cfg.dataset.name = "synthetic_ich"
  assert loop.initial_weights(cfg) == "from scratch (random initialisation)"
  with cfg.unlocked():
    cfg.model.name = "small_cnn"
    cfg.dataset.name = "rsna_ich"
  assert loop.initial_weights(cfg) == "from scratch (random initialisation)"
