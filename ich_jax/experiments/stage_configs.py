"""Stage configs: how an experiment derives each stage's training config from its own config.

Every experiment writes its stages in Python (`stages(config, root)` in its
module); these are the pieces they share. `stage_config` builds a loop config
from a template section, the dataset and the seed (seed 003's cascade, seed
000's weak vs strong); `base_config` and `merge` derive a stage from the whole
config without its `experiment` section, with overrides merged key by key
(seed 000's weighted ensemble, seed 002's patch U-Net); `cv_round` gives a
cross-validation round's splits.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def stage_config(template, dataset, seed: int, *, model=None, **fields):
  """A loop config from an experiment's parts: `template` (data, model, task, optimizer, train, eval), its dataset
  and seed; `model` ({"name", "options"}, optionally "pretrained", "pretrained_preprocessing" and
  "first_conv_rule") replaces the template's model; `fields` set dataset fields (splits, kind, exports)."""
  config, dataset = template.copy_and_resolve_references(), dataset.copy_and_resolve_references()
  with dataset.unlocked():
    for key, value in fields.items():
      dataset[key] = value
  with config.unlocked():
    config.seed = int(seed)
    config.dataset = dataset
    if model is not None:
      config.model = {"name": model.name, "options": model.get("options", {})}
      # The backbone's weight file and what goes with it (ich_jax.models.pretrained), where the config names them.
      for key in ("pretrained", "pretrained_preprocessing", "first_conv_rule"):
        if key in model:
          config.model[key] = model[key]
  return config


def _plain(c) -> dict:
  return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def merge(base: dict, overrides: Mapping, replace: Sequence[str] = (), prefix: str = "") -> dict:
  """`base` (a plain nested dict, changed in place) with `overrides` merged in: nested mappings key by key,
  anything else replaces; a dotted path in `replace` is replaced whole."""
  for key, value in _plain(overrides).items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) and path not in replace:
      merge(base[key], value, replace, prefix=f"{path}.")
    else:
      base[key] = json.loads(json.dumps(value, default=list)) if isinstance(value, (Mapping, list, tuple)) else value
  return base




def base_config(config) -> dict:
  """`config` without its `experiment` section, as a plain nested dict (lists for tuples): the base a stage's
  config starts from."""
  return json.loads(json.dumps({k: v for k, v in _plain(config).items() if k != "experiment"}, default=list))


def derive(base: Mapping, *sections: Mapping, replace: Sequence[str] = ()) -> dict:
  """A copy of `base` with each of `sections` merged over it in turn (`merge`; `replace`: dotted sections
  swapped whole, e.g. "task" for a stage that trains another task)."""
  out = json.loads(json.dumps(base))
  for section in sections:
    merge(out, section, replace)
  return out


def set_path(config: dict, path: str, value) -> None:
  """Sets the dotted `path` of `config` (a plain dict) to `value`, as it is (a stage's link to the folders of
  the stages it reads: `model.init_from`, `dataset.exports`)."""
  *parents, last = path.split(".")
  for p in parents:
    if not isinstance(config.get(p), Mapping):
      raise KeyError(f"{p!r} of {path!r} is not a section of the stage's config")
    config = config[p]
  config[last] = value


def cv_round(config: dict, cv, fold: int) -> dict:
  """`config` (a plain dict, changed in place) with round `fold`'s splits of cross-validation `cv` (num_folds,
  pool; `ich_jax.data.datasets.cv_round`): train, validation and the held-out eval split."""
  from ml_collections import ConfigDict

  from ich_jax.data import datasets

  splits = datasets.cv_round(ConfigDict(config["dataset"]), int(cv.num_folds), fold, cv.pool)
  config["dataset"].update(train_split=splits["train"], validation_split=splits["validation"],
                           eval_split=splits["test"])
  return config
