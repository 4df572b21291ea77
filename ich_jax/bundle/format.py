"""The bundle folder's format: members' entries and arrays written, the manifest and every file's hash checked.

The layout and the manifest's fields: `ich_jax.bundle` (the package docstring).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, atomic, lock, provenance
from ich_jax.jsonable import jsonable

FORMAT = "ich-jax-bundle"
# Version 2 adds "mean" members (seed 003's fold means); a bundle without one is written as version 1, so that
# code from before reads it. Both are read.
VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ROLES = {"multilabel_classification": "classifier", "segmentation": "segmentation",
         "sequence_classification": "sequence", "ensemble": "ensemble_weights", "detection": "detector"}
# A member without a model: the mean of its inputs' outputs (MEAN_FIELDS), seed 003's mean over fold models.
MEAN = "mean"
MEAN_FIELDS = ("probabilities", "features", "maps")   # what ich_jax.data.stacking.mean_over_models averages
# Members that read preprocessed slices; members whose `pred_mask` a bundle may output.
SLICE_ROLES = ("classifier", "segmentation", "ensemble_weights", "detector")
MASK_ROLES = ("segmentation", "ensemble_weights", "detector")
DATA_FIELDS = ("image_size", "recipe", "intensity", "clip_range", "clip_out_range")


class BundleError(ValueError):
  """A bundle folder that cannot be used: missing, tampered with, or inconsistent."""


# --- State ↔ flat arrays -----------------------------------------------------------------------


def flatten_state(state) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """A pytree of arrays (e.g. {"params": nnx.State, "model_state": nnx.State}) → ({path: array}, {path: key impl})."""
  import jax

  arrays, keys = {}, {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      keys[name] = str(jax.random.key_impl(leaf))
      leaf = jax.random.key_data(leaf)
    arrays[name] = np.asarray(jax.device_get(leaf))
  return arrays, keys


def unflatten_state(abstract, arrays: Mapping[str, np.ndarray], key_arrays: Mapping[str, str], where: str):
  """Fills `abstract` (a pytree of ShapeDtypeStructs) from `arrays`; every path, shape and dtype must match."""
  import jax

  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]
  missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
  if missing or extra:
    raise BundleError(f"{where}: the arrays do not fit the model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}"
                      f", unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}")
  leaves = []
  for name, (_, spec) in zip(names, flat):
    value = np.asarray(arrays[name])
    if name in key_arrays:
      leaf = jax.random.wrap_key_data(value, impl=key_arrays[name])
    else:
      if value.shape != spec.shape or value.dtype != spec.dtype:
        raise BundleError(f"{where}: {name} is {value.dtype}{list(value.shape)}, the model needs "
                          f"{spec.dtype}{list(spec.shape)}")
      leaf = jax.numpy.asarray(value)
    leaves.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, leaves)



# --- Writing ---------------------------------------------------------------------------------------


def data_entry(data_config) -> dict:
  """The preprocessing fields of `config.data` a slice-input member needs (the pipeline's _Plan, as JSON)."""
  from ich_jax.data import slice_plan

  plan = slice_plan.from_config(data_config)
  return {"image_size": plan.image_size, "recipe": [list(r) for r in plan.recipe], "intensity": plan.intensity,
          "clip_range": list(plan.clip_range), "clip_out_range": list(plan.clip_out_range)}


def member_entry(name: str, *, model: Mapping, task: Mapping, state, data: Mapping | None = None,
                 inputs: Sequence[str] = (), source: Mapping | None = None) -> tuple[dict, dict, dict]:
  """(manifest entry, arrays, key_arrays) of one member; `state` holds "params" and "model_state"."""
  task = jsonable(task)
  if task.get("name") not in ROLES:
    raise BundleError(f"member {name!r}: task {task.get('name')!r} cannot be bundled; known: {sorted(ROLES)}")
  role = ROLES[task["name"]]
  if (role in SLICE_ROLES) != (data is not None):
    raise BundleError(f"member {name!r} ({role}): slice-input members need `data`, the others none")
  if (role in ("sequence", "ensemble_weights")) != bool(inputs):
    raise BundleError(f"member {name!r} ({role}): sequence and ensemble_weights members need `inputs`, others none")
  arrays, keys = flatten_state({"params": state["params"], "model_state": state["model_state"]})
  entry = {"name": name, "role": role, "model": jsonable(model), "task": task,
           "data": None if data is None else jsonable(data), "inputs": list(inputs),
           "params": f"params/{name}.npz", "key_arrays": keys, "source": jsonable(source or {})}
  return entry, arrays, keys


def mean_entry(name: str, inputs: Sequence[str], source: Mapping | None = None) -> dict:
  """The manifest entry of a mean member: no model and no file, the mean of `inputs`' outputs (`MEAN_FIELDS`)."""
  if not inputs:
    raise BundleError(f"member {name!r} (mean): a mean needs inputs")
  return {"name": name, "role": MEAN, "model": None, "task": None, "data": None, "inputs": list(inputs),
          "params": None, "key_arrays": {}, "source": jsonable(source or {})}


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def manifest_hash(manifest: Mapping) -> str:
  """The manifest's own `hash`: SHA-256 of its content without that field (catches an accidental edit)."""
  body = {k: v for k, v in manifest.items() if k != "hash"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_outputs(members: Sequence[Mapping], outputs: Mapping) -> None:
  """The members are in dependency order and `outputs` names members of the right roles (a mean member counts as
  its inputs' role where it is read, which must be one)."""
  seen: dict[str, str] = {}
  roles: dict[str, str] = {}
  for m in members:
    if m["name"] in seen:
      raise BundleError(f"member name {m['name']!r} appears twice")
    if m["role"] == MEAN:
      kinds = {seen.get(i) for i in m["inputs"]}
      if not m["inputs"] or len(kinds) != 1 or None in kinds:
        raise BundleError(f"mean member {m['name']!r} averages {m['inputs']}: it needs earlier members of one role, "
                          f"got roles {sorted(str(k) for k in kinds)}")
      seen[m["name"]], roles[m["name"]] = kinds.pop(), MEAN
      continue
    for i in m["inputs"]:
      if i not in seen:
        raise BundleError(f"member {m['name']!r} reads {i!r}, which is not an earlier member")
      if m["role"] == "ensemble_weights" and seen[i] != "segmentation":
        raise BundleError(f"ensemble_weights member {m['name']!r} reads {i!r}, a {seen[i]}: it needs segmentation maps")
      if m["role"] == "sequence" and seen[i] not in ("classifier", "sequence"):
        raise BundleError(f"sequence member {m['name']!r} reads {i!r}, a {seen[i]}: it needs classifier or "
                          "sequence outputs")
    seen[m["name"]] = roles[m["name"]] = m["role"]
  probs = outputs.get("probabilities") or {}
  if probs.get("combine") != "mean" or not probs.get("members"):
    raise BundleError(f"outputs.probabilities must be {{'combine': 'mean', 'members': [...]}}, got {probs!r}")
  for name in probs["members"]:
    if name not in seen:
      raise BundleError(f"outputs.probabilities names {name!r}, not a member ({sorted(seen)})")
  if outputs.get("mask") is not None and roles.get(outputs["mask"]) not in MASK_ROLES:
    raise BundleError(f"outputs.mask={outputs['mask']!r} is not a segmentation, ensemble_weights or detector member")
  if outputs.get("detections") is not None and roles.get(outputs["detections"]) != "detector":
    raise BundleError(f"outputs.detections={outputs['detections']!r} is not a detector member")
  if outputs.get("gradcam") is not None and roles.get(outputs["gradcam"]) != "classifier":
    raise BundleError(f"outputs.gradcam={outputs['gradcam']!r} is not a classifier member")


def write(directory, members: Sequence[tuple[dict, dict]], outputs: Mapping, *, threshold: float,
          meta: Mapping | None = None, inputs: Sequence = ()) -> pathlib.Path:
  """Writes a bundle: `members` are (entry, arrays) in dependency order (a mean member: arrays None, no file).
  Written beside, then swapped into place.

  `directory` is refused (`atomic.NotOurs`) if it holds anything but an earlier
  bundle, or is, holds or lies inside one of `inputs` (the run folders or
  bundles it is made from; a run folder itself may hold it: `<workdir>/bundle`).
  """
  directory = pathlib.Path(directory)
  atomic.check_output(directory, "bundle", protected=[p for p in inputs if not _is_bundle(p)],
                      inputs=[p for p in inputs if _is_bundle(p)])
  entries = [e for e, _ in members]
  outputs = {"probabilities": dict(outputs["probabilities"]), "mask": outputs.get("mask"),
             "gradcam": outputs.get("gradcam"), "detections": outputs.get("detections")}
  check_outputs(entries, outputs)
  threshold = float(threshold)
  if not 0.0 < threshold < 1.0:
    raise BundleError(f"threshold={threshold}: the operating threshold must lie in (0, 1)")
  with lock.FolderLock(directory, beside=True, what="bundle"):
    tmp = atomic.begin(directory, "bundle")
    try:
      (tmp / "params").mkdir()
      files = {}
      for entry, arrays in members:
        if entry["role"] == MEAN:
          continue
        path = tmp / entry["params"]
        with open(path, "wb") as f:
          np.savez(f, **arrays)
        files[entry["params"]] = _sha256(path)
      version = VERSION if any(e["role"] == MEAN for e in entries) else 1
      # Optional to readers (a bundle from before has none), so no new format version: covered by `hash`.
      manifest = {"format": FORMAT, "version": version, "labels": list(LABELS), "threshold": threshold,
                  "members": entries, "outputs": outputs, "files": files, "meta": jsonable(meta or {}),
                  "provenance": {"software": provenance.software()}}
      manifest["hash"] = manifest_hash(manifest)
      (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
      atomic.abandon(tmp)
      raise
    return atomic.commit(tmp, directory)


def _is_bundle(path) -> bool:
  return (pathlib.Path(path) / MANIFEST).is_file()


# --- Reading -------------------------------------------------------------------------------------


def manifest_sha256(directory) -> str:
  """The bundle's identity: SHA-256 of its manifest.json bytes, which list every file's SHA-256 (`verify` prints it)."""
  return hashlib.sha256((pathlib.Path(directory) / MANIFEST).read_bytes()).hexdigest()


def read_manifest(directory, *, expected_sha256: str | None = None) -> dict:
  """The manifest, after checking the format, the manifest's own hash and every listed file's hash.

  `expected_sha256`: the identity `bundle verify` printed (`manifest_sha256`);
  a bundle whose manifest.json differs from it is refused, even if it was
  edited consistently (its internal hash recomputed).
  """
  directory = pathlib.Path(directory)
  path = directory / MANIFEST
  if not path.is_file():
    raise BundleError(f"{directory}: not a model bundle (no {MANIFEST}); write one with "
                      "`python launch.py --config C --workdir W --mode export`")
  raw = path.read_bytes()
  sha = hashlib.sha256(raw).hexdigest()
  if expected_sha256 is not None and sha != expected_sha256.strip().lower():
    raise BundleError(f"{path}: SHA-256 {sha} is not the expected {expected_sha256.strip()}: this is not the bundle "
                      "that was verified (its manifest or a file it lists differs)")
  try:
    manifest = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BundleError(f"{path}: not valid JSON ({e}); the bundle is damaged") from e
  if manifest.get("format") != FORMAT:
    raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  if manifest.get("version") not in READ_VERSIONS:
    raise BundleError(f"{path}: bundle version {manifest.get('version')!r}; this code reads versions "
                      f"{list(READ_VERSIONS)}")
  if manifest.get("hash") != manifest_hash(manifest):
    raise BundleError(f"{path}: the manifest's hash does not match its content: the manifest was edited or damaged")
  for m in manifest["members"]:
    if m.get("role") == MEAN and m.get("params") is None:
      continue
    if m.get("params") not in manifest["files"]:
      raise BundleError(f"{path}: member {m.get('name')!r} loads {m.get('params')!r}, which the manifest's `files` "
                        "does not list with a SHA-256: every file a bundle loads must be hashed")
  for name, digest in manifest["files"].items():
    f = directory / name
    if not f.is_file():
      raise BundleError(f"{directory}: {name} is missing (the bundle is incomplete)")
    if _sha256(f) != digest:
      raise BundleError(f"{f}: SHA-256 differs from the manifest's: the file was modified or truncated")
  if tuple(manifest["labels"]) != LABELS:
    raise BundleError(f"{path}: label order {manifest['labels']} differs from this code's {list(LABELS)}")
  check_outputs(manifest["members"], manifest["outputs"])
  manifest["sha256"] = sha   # in memory only: the manifest file's own digest
  return manifest


def provenance_of(manifest: Mapping) -> dict:
  """What made a bundle: {"software": the exporting software (None in a bundle from before provenance was
  recorded), "members": {name: its run's provenance (`ich_jax.train.config_record.PROVENANCE`: software,
  dataset, config_hash), None if not recorded}}; mean members, which have no run of their own, are left out."""
  return {"software": (manifest.get("provenance") or {}).get("software"),
          "members": {e["name"]: (e.get("source") or {}).get("provenance")
                      for e in manifest["members"] if e["role"] != MEAN}}


def describe_provenance(manifest: Mapping) -> list[str]:
  """`provenance_of` as lines for people (`bundle verify`): the exporting software, then per member the software
  that trained it, its dataset (name/config, builder version, folder), splits and config hash."""
  p = provenance_of(manifest)
  if p["software"] is None and not any(p["members"].values()):
    return ["provenance: not recorded (a bundle written before bundles recorded it)"]
  lines = ["provenance:", f"  exported with {provenance.describe(p['software'])}"]
  for name, run in p["members"].items():
    if not run:
      lines.append(f"  {name}: not recorded")
      continue
    d = run.get("dataset") or {}
    splits = ", ".join(f"{k.removesuffix('_split')} {d[k]!r}"
                       for k in ("train_split", "eval_split", "validation_split") if d.get(k))
    # A TFDS dataset's builder version and folder; a run of exports only (seed 003's sequence models) has none.
    read = (f" v{d['version']} ({d.get('folder')})" if d.get("version")
            else f", the exports of {len(d.get('exports') or [])} run(s)")
    lines += [f"  {name}: dataset {d.get('name')}/{d.get('config')}{read}; splits: {splits or '?'}",
              f"    config sha256 {run.get('config_hash')}; trained with {provenance.describe(run.get('software'))}"]
  return lines


def read_listed(directory: pathlib.Path, manifest: Mapping, name: str) -> bytes:
  """A file's bytes, checked against the manifest's SHA-256 as they are read (no window to swap the file)."""
  data = (directory / name).read_bytes()
  if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
    raise BundleError(f"{directory / name}: SHA-256 differs from the manifest's: the file was modified or truncated")
  return data

