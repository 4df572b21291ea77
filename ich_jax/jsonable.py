"""Values as JSON holds them: the one converter behind metrics.json, bundle manifests, stage fingerprints and
prediction reports.

It sits at the bottom of the package (beside the label constants and the atomic writers) because every upper
layer writes JSON: eval (metrics.json), experiments (stage fingerprints), the bundle (manifest.json) and
predict (report.json) import it without reaching up or sideways.
"""
from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import numpy as np


def jsonable(x):
  """`x` with configs (`to_dict`) and mappings as dicts of str keys in their own order, tuples as lists, numpy
  scalars as Python numbers, paths as str, and NaN or ±inf as None.

  None for a non-finite number because JSON has none (`json.dumps` would write `NaN`, which strict readers
  refuse); a missing number prints "n/a" when read back (`ich_jax.eval.formatting`). Key order is kept: pass
  `sort_keys=True` to `json.dumps` where the text must not depend on it (hashes).
  """
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, pathlib.PurePath):
    return str(x)
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x
