"""The one JSON converter: configs, numpy scalars, paths, and NaN as null."""
import json
import math
import pathlib

import numpy as np
from ml_collections import ConfigDict

from ich_jax.jsonable import jsonable


def test_values_json_cannot_hold_become_ones_it_can():
  value = {"b": (1, np.float32(0.5), np.int64(3)), "a": {2: math.nan, "inf": -math.inf},
           "path": pathlib.Path("/runs/x"), "config": ConfigDict({"widths": (8, 16)}), "flag": np.bool_(True)}
  got = jsonable(value)
  assert got == {"b": [1, 0.5, 3], "a": {"2": None, "inf": None}, "path": "/runs/x", "config": {"widths": [8, 16]},
                 "flag": True}
  # Keys keep their order (a manifest's bytes do not change); strict JSON, no NaN.
  assert list(got) == ["b", "a", "path", "config", "flag"]
  assert json.loads(json.dumps(got, allow_nan=False)) == got
