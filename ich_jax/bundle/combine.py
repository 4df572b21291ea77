"""Ensembles of bundles: one bundle from several (probabilities averaged, the mask from a segmentation bundle)."""
from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence

import numpy as np

from ich_jax.bundle.format import MEAN, BundleError, read_listed, read_manifest, write


def combine(out, average: Sequence, mask=None, *, threshold: float | None = None) -> pathlib.Path:
  """One bundle from several: per-slice probabilities averaged over the `average` bundles' answers, the mask
  (and its volumes) from `mask`'s (a segmentation or detector bundle; it joins the average only if listed there
  too), the boxes from the first of these bundles that detects.

  Members are renamed `<k>.<name>` for the k-th input bundle. The threshold is the inputs' common one
  unless given.
  """
  sources = list(dict.fromkeys([pathlib.Path(p) for p in average] + ([pathlib.Path(mask)] if mask else [])))
  if not average:
    raise BundleError("combine: name at least one bundle whose probabilities to average")
  members, outputs, thresholds, seen = [], {"probabilities": {"combine": "mean", "members": []}}, set(), {}
  for k, path in enumerate(sources):
    manifest = read_manifest(path)
    thresholds.add(float(manifest["threshold"]))
    rename = {e["name"]: f"{k}.{e['name']}" for e in manifest["members"]}
    for e in manifest["members"]:
      entry = {**e, "name": rename[e["name"]], "inputs": [rename[i] for i in e["inputs"]],
               "params": None if e["role"] == MEAN else f"params/{rename[e['name']]}.npz",
               "source": {**e.get("source", {}), "bundle": str(path.absolute()), "bundle_sha256": manifest["sha256"]}}
      if e["role"] == MEAN:
        members.append((entry, None))
        continue
      with np.load(io.BytesIO(read_listed(path, manifest, e["params"])), allow_pickle=False) as z:
        members.append((entry, {key: z[key] for key in z.files}))
    o = manifest["outputs"]
    if path in [pathlib.Path(p) for p in average]:
      outputs["probabilities"]["members"] += [rename[n] for n in o["probabilities"]["members"]]
      if outputs.get("gradcam") is None and o.get("gradcam") is not None:
        outputs["gradcam"] = rename[o["gradcam"]]
    if mask is not None and path == pathlib.Path(mask):
      if o.get("mask") is None:
        raise BundleError(f"combine: --mask {path} predicts no mask (no segmentation or detector member in its "
                          "outputs)")
      outputs["mask"] = rename[o["mask"]]
    if outputs.get("detections") is None and o.get("detections") is not None:
      outputs["detections"] = rename[o["detections"]]
    seen[str(path)] = manifest["sha256"]
  if threshold is None:
    if len(thresholds) > 1:
      raise BundleError(f"combine: the bundles' thresholds differ {sorted(thresholds)}; pass --threshold")
    threshold = thresholds.pop()
  return write(out, members, outputs, threshold=threshold, meta={"combined_from": seen}, inputs=sources)

