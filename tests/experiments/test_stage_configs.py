"""Stage configs: a template section over an experiment's dataset and seed; the base config with overrides merged
key by key (or sections replaced whole), links set as they are, and a cross-validation round's splits."""
import pytest
from ml_collections import ConfigDict

from ich_jax.experiments import stage_configs


def test_a_template_becomes_a_loop_config_with_the_dataset_seed_and_model():
  template = ConfigDict({"model": {"name": "", "options": {}}, "train": {"num_steps": 3}})
  dataset = ConfigDict({"name": "synthetic_ich", "train_split": "train"})
  c = stage_configs.stage_config(template, dataset, 7, model=ConfigDict({"name": "vgg19"}),
                                 train_split="train[fold!=0/2]")
  assert c.seed == 7 and c.model.to_dict() == {"name": "vgg19", "options": {}} and c.train.num_steps == 3
  assert c.dataset.train_split == "train[fold!=0/2]" and dataset.train_split == "train"   # the parts untouched


def test_derived_configs_merge_key_by_key_replace_whole_sections_and_leave_the_base_alone():
  config = ConfigDict({"experiment": {"name": "x"}, "model": {"name": "unet", "options": {"width": 8}},
                       "task": {"name": "segmentation", "loss": "dice"}, "data": {"recipe": ((0, 40, 80),)}})
  base = stage_configs.base_config(config)
  assert "experiment" not in base and base["data"]["recipe"] == [[0, 40, 80]]   # tuples as JSON has them
  got = stage_configs.derive(base, {"model": {"name": "encoder"}, "task": {"name": "multilabel_classification"}},
                             replace=("task",))
  assert got["model"] == {"name": "encoder", "options": {"width": 8}}           # merged: the options stay
  assert got["task"] == {"name": "multilabel_classification"}                   # replaced: no Dice loss left
  assert base["model"]["name"] == "unet" and base["task"]["loss"] == "dice"
  stage_configs.set_path(got, "model.init_from", "/runs/pre")
  assert got["model"]["init_from"] == "/runs/pre"
  with pytest.raises(KeyError, match="'dataset' of 'dataset.exports' is not a section"):
    stage_configs.set_path(got, "dataset.exports", ("/a",))


def test_a_cross_validation_round_sets_the_three_splits():
  config = {"dataset": {"name": "synthetic_ich", "config": "tiny", "train_split": "train"}}
  cv = ConfigDict({"num_folds": 5, "pool": "train+test"})
  d = stage_configs.cv_round(config, cv, 3)["dataset"]
  assert (d["train_split"], d["validation_split"], d["eval_split"]) == (
      "train+test[fold=0,1,2/5]", "train+test[fold=4/5]", "train+test[fold=3/5]")
