"""What the config files share: reading `get_config(arg)`'s one-string argument (big_vision's
`configs/common.parse_arg`, with the spellings these configs take)."""
from __future__ import annotations

import re
from collections.abc import Sequence

from ml_collections import ConfigDict


def parse_arg(arg: str | None, *, config: str, models: Sequence[str] = (), **spec) -> ConfigDict:
  """`configs/x.py:ARG`'s ARG → its settings, one field per name of `spec` (and `model` with `models`).

  ARG is tokens separated by ":" or "," (both spellings are in use: `segmentation.py:unet:smoke`,
  `sequence.py:seq_gru_1,smoke`, `rsna_cascade.py:smoke,neighbours`). A token is
    - a flag: a name of `spec` whose default is False (`smoke=False`): present, it is True;
    - `key=value` for a name of `spec`, parsed as its default's type, or as the type given with it
      (`fold=(None, int)`: default None, an int when given);
    - one of `models`, the field `model` (default: the first of them); at most one.
  Anything else is an error naming the config file `config`, the token and what the file takes.
  """
  defaults = {k: (v[0] if isinstance(v, tuple) else v) for k, v in spec.items()}
  types = {k: (v[1] if isinstance(v, tuple) else type(v)) for k, v in spec.items()}
  out = dict(defaults, **({"model": models[0]} if models else {}))
  chosen = []
  for token in filter(None, re.split(r"[:,]", arg or "")):
    key, eq, value = token.partition("=")
    if eq and key in spec and types[key] is not bool:
      try:
        out[key] = types[key](value)
      except ValueError:
        raise ValueError(f"{config}: argument {token!r} in {arg!r}: {value!r} cannot be read as "
                         f"{types[key].__name__}") from None
    elif not eq and token in models:
      chosen.append(token)
      out["model"] = token
    elif not eq and defaults.get(token) is False:
      out[token] = True
    else:
      raise ValueError(f"{config}: unknown argument {token!r} in {arg!r}; expected {_takes(models, defaults, types)}")
  if len(set(chosen)) > 1:
    raise ValueError(f"{config}: argument {arg!r} names {len(set(chosen))} models {chosen}; give one of "
                     f"{tuple(models)}")
  return ConfigDict(out)


def _takes(models: Sequence[str], defaults: dict, types: dict) -> str:
  words = ([f"one of {tuple(models)}"] if models else []) + [repr(k) for k, v in defaults.items() if v is False]
  words += [f"'{k}=<{types[k].__name__}>'" for k, v in defaults.items() if v is not False]
  return ", ".join(words) or "no argument"
