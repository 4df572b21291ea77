"""Model bundles: trained models as one self-contained folder, and the engine that runs them on a study.

  python launch.py --config C --workdir W --mode export [--out DIR]          # write (ich_jax.train.export)
  python -m ich_jax.bundle export --run W/STAGE --out DIR                    # a run folder, by its config.json
  python -m ich_jax.bundle combine --out DIR --average B1 B2 [--mask B3]     # ensembles of bundles
  python -m ich_jax.bundle verify DIR                                        # hashes and members

A bundle is a folder:

  manifest.json          what the members are and how they combine (below), the label order, the operating
                         threshold, the format version, the SHA-256 of every file a member loads (`files`),
                         and a hash of the manifest's own content (`hash`: catches an accidental edit)
  params/<member>.npz    one member's variables as flat numpy arrays, keyed by their nnx state path
                         ("params/blocks/0/conv/kernel/value", "model_state/blocks/0/norm/mean/value", ...);
                         PRNG keys are stored as their key data (manifest: `key_arrays`, path → impl)

Why numpy rather than Orbax: a bundle leaves the lab, so it should be
readable without the training stack's checkpoint machinery (no async
writers, no tensorstore layout), be a handful of plain files whose hashes a
manifest can list, and load into any process with `np.load`. Orbax stays the
training checkpoint format (ich_jax.train.checkpoint).

A member (manifest `members`, in dependency order: a member's inputs come before it):

  name        unique within the bundle
  role        "classifier" (task multilabel_classification: slice → six probabilities, Grad-CAM),
              "segmentation" (task segmentation: slice → blood maps, `pred_mask`),
              "sequence" (task sequence_classification: seed 003's seq_gru_1/2 over the whole series),
              "ensemble_weights" (task ensemble: seed 000's weight model over segmentation members' maps)
  model       {"name", "num_classes", "in_channels", "options"}: `ich_jax.models.build` arguments
  task        the task config (`ich_jax.train.tasks.build`): how the model is called and what it predicts
  data        slice-input members only: how a slice becomes its input (`ich_jax.data.pipeline`): image_size,
              recipe [(slice offset, level, width), ...], intensity, clip_range, clip_out_range
  inputs      sequence / ensemble_weights members: the names of the members whose outputs they read, in the
              order their training exports were listed (`config.dataset.exports`)
  params      the member's .npz file
  source      where it came from (workdir, step, dataset): provenance only, never read

`outputs` says how members make the bundle's answer:

  probabilities  {"combine": "mean", "members": [names]}: per-slice probabilities, the mean over the members
                 (one member: its own); a study's probability is its most suspicious slice's (seeds 000, 003)
  mask           the member whose `pred_mask` is the predicted blood mask (segmentation or ensemble_weights), or null
  gradcam        the classifier member whose Grad-CAM the overview shows, or null

So a seed 003 cascade is three members (CNN → seq_gru_1 → seq_gru_2, probabilities from the last), seed
000's ensemble is U-Nets plus the weight model (probabilities and mask from it), and averaged backbones
or a classifier beside a segmentation model are `combine` of single bundles.

Loading (`load`) needs only ich_jax: models are rebuilt by name, variables filled from the arrays
(every path and shape must match), hashes checked first and again on the bytes loaded. A bundle that
was edited, truncated, is missing a file, or loads a file its manifest does not list is refused with
the file that differs. A bundle's identity is the SHA-256 of manifest.json (`manifest_sha256`; it
covers every file through their listed hashes): `verify` prints it, prediction reports record it, and
`load(..., expected_sha256=...)` (predict's `--expect-sha256`) refuses any other bundle, even one whose
manifest was edited and its `hash` recomputed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ich_jax import LABELS, atomic, lock

FORMAT = "ich-jax-bundle"
VERSION = 1
MANIFEST = "manifest.json"
ROLES = {"multilabel_classification": "classifier", "segmentation": "segmentation",
         "sequence_classification": "sequence", "ensemble": "ensemble_weights"}
SLICE_ROLES = ("classifier", "segmentation", "ensemble_weights")   # members that read preprocessed slices
MASK_ROLES = ("segmentation", "ensemble_weights")
DATA_FIELDS = ("image_size", "recipe", "intensity", "clip_range", "clip_out_range")
# Sequence members see a series padded to a multiple of this many slices: few shapes, few compilations.
# The sequence models' outputs at real slices do not depend on padding (ich_jax.models.sequence).
SEQUENCE_BUCKET = 32


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


def _jsonable(x):
  if isinstance(x, Mapping) or hasattr(x, "to_dict"):
    d = x.to_dict() if hasattr(x, "to_dict") else x
    return {str(k): _jsonable(v) for k, v in d.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def as_tuples(x):
  """JSON lists back to the tuples configs hold (model options such as `widths`), recursively."""
  if isinstance(x, Mapping):
    return {k: as_tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(as_tuples(v) for v in x)
  return x


def data_entry(data_config) -> dict:
  """The preprocessing fields of `config.data` a slice-input member needs (its slice_plan.Plan, as JSON)."""
  from ich_jax.data import slice_plan

  plan = slice_plan.from_config(data_config)
  return {"image_size": plan.image_size, "recipe": [list(r) for r in plan.recipe], "intensity": plan.intensity,
          "clip_range": list(plan.clip_range), "clip_out_range": list(plan.clip_out_range)}


def member_entry(name: str, *, model: Mapping, task: Mapping, state, data: Mapping | None = None,
                 inputs: Sequence[str] = (), source: Mapping | None = None) -> tuple[dict, dict, dict]:
  """(manifest entry, arrays, key_arrays) of one member; `state` holds "params" and "model_state"."""
  task = _jsonable(task)
  if task.get("name") not in ROLES:
    raise BundleError(f"member {name!r}: task {task.get('name')!r} cannot be bundled; known: {sorted(ROLES)}")
  role = ROLES[task["name"]]
  if (role in SLICE_ROLES) != (data is not None):
    raise BundleError(f"member {name!r} ({role}): slice-input members need `data`, the others none")
  if (role in ("sequence", "ensemble_weights")) != bool(inputs):
    raise BundleError(f"member {name!r} ({role}): sequence and ensemble_weights members need `inputs`, others none")
  arrays, keys = flatten_state({"params": state["params"], "model_state": state["model_state"]})
  entry = {"name": name, "role": role, "model": _jsonable(model), "task": task,
           "data": None if data is None else _jsonable(data), "inputs": list(inputs),
           "params": f"params/{name}.npz", "key_arrays": keys, "source": _jsonable(source or {})}
  return entry, arrays, keys


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _manifest_hash(manifest: Mapping) -> str:
  body = {k: v for k, v in manifest.items() if k != "hash"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_outputs(members: Sequence[Mapping], outputs: Mapping) -> None:
  """The members are in dependency order and `outputs` names members of the right roles."""
  seen: dict[str, str] = {}
  for m in members:
    if m["name"] in seen:
      raise BundleError(f"member name {m['name']!r} appears twice")
    for i in m["inputs"]:
      if i not in seen:
        raise BundleError(f"member {m['name']!r} reads {i!r}, which is not an earlier member")
      if m["role"] == "ensemble_weights" and seen[i] != "segmentation":
        raise BundleError(f"ensemble_weights member {m['name']!r} reads {i!r}, a {seen[i]}: it needs segmentation maps")
      if m["role"] == "sequence" and seen[i] not in ("classifier", "sequence"):
        raise BundleError(f"sequence member {m['name']!r} reads {i!r}, a {seen[i]}: it needs classifier or "
                          "sequence outputs")
    seen[m["name"]] = m["role"]
  probs = outputs.get("probabilities") or {}
  if probs.get("combine") != "mean" or not probs.get("members"):
    raise BundleError(f"outputs.probabilities must be {{'combine': 'mean', 'members': [...]}}, got {probs!r}")
  for name in probs["members"]:
    if name not in seen:
      raise BundleError(f"outputs.probabilities names {name!r}, not a member ({sorted(seen)})")
  if outputs.get("mask") is not None and seen.get(outputs["mask"]) not in MASK_ROLES:
    raise BundleError(f"outputs.mask={outputs['mask']!r} is not a segmentation or ensemble_weights member")
  if outputs.get("gradcam") is not None and seen.get(outputs["gradcam"]) != "classifier":
    raise BundleError(f"outputs.gradcam={outputs['gradcam']!r} is not a classifier member")


def write(directory, members: Sequence[tuple[dict, dict]], outputs: Mapping, *, threshold: float,
          meta: Mapping | None = None, inputs: Sequence = ()) -> pathlib.Path:
  """Writes a bundle: `members` are (entry, arrays) in dependency order. Written beside, then swapped into place.

  `directory` is refused (`atomic.NotOurs`) if it holds anything but an earlier
  bundle, or is, holds or lies inside one of `inputs` (the run folders or
  bundles it is made from; a run folder itself may hold it: `<workdir>/bundle`).
  """
  directory = pathlib.Path(directory)
  atomic.check_output(directory, "bundle", protected=[p for p in inputs if not _is_bundle(p)],
                      inputs=[p for p in inputs if _is_bundle(p)])
  entries = [e for e, _ in members]
  outputs = {"probabilities": dict(outputs["probabilities"]), "mask": outputs.get("mask"),
             "gradcam": outputs.get("gradcam")}
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
        path = tmp / entry["params"]
        with open(path, "wb") as f:
          np.savez(f, **arrays)
        files[entry["params"]] = _sha256(path)
      manifest = {"format": FORMAT, "version": VERSION, "labels": list(LABELS), "threshold": threshold,
                  "members": entries, "outputs": outputs, "files": files, "meta": _jsonable(meta or {})}
      manifest["hash"] = _manifest_hash(manifest)
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
  if manifest.get("version") != VERSION:
    raise BundleError(f"{path}: bundle version {manifest.get('version')!r}; this code reads version {VERSION}")
  if manifest.get("hash") != _manifest_hash(manifest):
    raise BundleError(f"{path}: the manifest's hash does not match its content: the manifest was edited or damaged")
  for m in manifest["members"]:
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


def _read_listed(directory: pathlib.Path, manifest: Mapping, name: str) -> bytes:
  """A file's bytes, checked against the manifest's SHA-256 as they are read (no window to swap the file)."""
  data = (directory / name).read_bytes()
  if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
    raise BundleError(f"{directory / name}: SHA-256 differs from the manifest's: the file was modified or truncated")
  return data


def window(entry: Mapping) -> dict | None:
  """A member's sliding window {"patch", "stride"} (its task's, seed 002's patch U-Net), or None: whole slices."""
  import ml_collections

  from ich_jax.train import tasks

  task = tasks.build(ml_collections.ConfigDict(entry["task"]))
  return {"patch": task.patch, "stride": task.stride} if getattr(task, "patch", 0) else None


def plan_of(data: Mapping):
  """A member's `data` entry → the pipeline plan preprocessing runs with (no augmentation)."""
  import ml_collections

  from ich_jax.data import slice_plan

  cfg = ml_collections.ConfigDict({**{k: data[k] for k in DATA_FIELDS}, "augment": {"enabled": False}})
  return slice_plan.from_config(cfg)


@dataclasses.dataclass
class Member:
  """One loaded model: its entry, task, eval-mode graph and variables, preprocessing plan and jit functions."""
  entry: dict
  task: Any
  graphdef: Any
  state: tuple          # (params, model_state), merged into graphdef for every call
  plan: Any = None      # slice_plan.Plan for slice-input members
  fns: dict = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return self.entry["name"]

  @property
  def role(self) -> str:
    return self.entry["role"]

  def jitted(self, method: str):
    """jit(state, batch) → the task's `method` ("predict" or "export") outputs, built once per member and
    shared by members of the same model and task (seed 000's five U-Nets compile once)."""
    if method not in self.fns:
      key = (json.dumps(self.entry["model"], sort_keys=True), json.dumps(self.entry["task"], sort_keys=True), method)
      if key not in _SHARED_FNS:
        import jax
        from flax import nnx

        task_fn, graphdef = getattr(self.task, method), self.graphdef

        def fn(state, batch):
          return task_fn(nnx.merge(graphdef, *state), batch)

        if len(_SHARED_FNS) >= 32:
          _SHARED_FNS.pop(next(iter(_SHARED_FNS)))
        _SHARED_FNS[key] = jax.jit(fn)
      self.fns[method] = _SHARED_FNS[key]
    return self.fns[method]


# Jitted member calls by (model, task, method): equal members trace the same program (see Member.jitted).
_SHARED_FNS: dict[tuple, Any] = {}


def _load_member(directory: pathlib.Path, manifest: Mapping, entry: dict) -> Member:
  import ml_collections
  from flax import nnx

  from ich_jax import models
  from ich_jax.train import tasks

  m = entry["model"]
  try:
    abstract = nnx.eval_shape(lambda: models.build(m["name"], num_classes=int(m["num_classes"]),
                                                   in_channels=int(m["in_channels"]), rngs=nnx.Rngs(0),
                                                   **as_tuples(m.get("options") or {})))
  except (KeyError, TypeError, ValueError) as e:
    raise BundleError(f"{directory}: member {entry['name']!r}: cannot build model {m['name']!r} with "
                      f"{m}: {e}") from e
  abstract.eval()
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  where = f"{directory / entry['params']} (member {entry['name']!r}, model {m['name']!r})"
  with np.load(io.BytesIO(_read_listed(directory, manifest, entry["params"])), allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  state = unflatten_state({"params": params, "model_state": rest}, arrays, entry.get("key_arrays", {}), where)
  task = tasks.build(ml_collections.ConfigDict(entry["task"]))
  plan = plan_of(entry["data"]) if entry.get("data") else None
  return Member(entry, task, graphdef, (state["params"], state["model_state"]), plan)


class Bundle:
  """A loaded bundle: `members` by name (dependency order), `outputs`, `threshold`; `predict` runs a study."""

  def __init__(self, directory, manifest: dict, members: dict[str, Member]):
    self.directory = pathlib.Path(directory)
    self.manifest = manifest
    self.members = members
    self.outputs = manifest["outputs"]
    self.threshold = float(manifest["threshold"])
    # Which outputs each member must give: features for sequence model 1, maps for the weight model.
    self._needs_features = {i for m in members.values() if m.role == "sequence"
                            and m.task.inputs == "features" for i in m.entry["inputs"]}
    self._needs_maps = {i for m in members.values() if m.role == "ensemble_weights" for i in m.entry["inputs"]}
    self._gradcam_fns: dict = {}
    self.gradcam_error: str | None = None

  @property
  def hash(self) -> str:
    """The bundle's identity (`manifest_sha256`: what `bundle verify` prints and `--expect-sha256` pins)."""
    return self.manifest["sha256"]

  @property
  def has_mask(self) -> bool:
    return self.outputs.get("mask") is not None

  @property
  def mask_subtypes(self) -> bool:
    """True when the mask labels subtypes (1–5, LABELS index); False: 1 = blood of unknown subtype."""
    m = self.members.get(self.outputs.get("mask"))
    return m is not None and m.role == "segmentation" and m.task.maps == "subtypes"

  @property
  def predicts_subtypes(self) -> bool:
    """False when every probability member is a blood-only segmentation (its subtype columns repeat "any")."""
    return any(m.role in ("classifier", "sequence") or (m.role == "segmentation" and m.task.maps == "subtypes")
               for m in (self.members[n] for n in self.outputs["probabilities"]["members"]))

  def warm_up(self, batch_size: int, *, gradcam_batch: int = 0) -> None:
    """Compiles every member for `batch_size` (and Grad-CAM for `gradcam_batch` slices) on a blank slice."""
    images = {m.plan: np.zeros((1, m.plan.image_size, m.plan.image_size, len(m.plan.recipe)), np.float32)
              for m in self.members.values() if m.plan is not None}
    self.predict(images, np.zeros(1), batch_size=batch_size)
    if gradcam_batch and not self.has_mask:
      self.gradcam(images, [0], batch=gradcam_batch)

  def describe(self) -> list[dict]:
    return [{"name": m.name, "role": m.role, "model": m.entry["model"]["name"], "inputs": m.entry["inputs"],
             "image_size": m.plan.image_size if m.plan else None, "window": window(m.entry)}
            for m in self.members.values()]

  # --- The per-slice model call -----------------------------------------------------------------

  def slice_outputs(self, member: Member, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One slice-input member on one batch of preprocessed slices → its outputs (numpy).

    The one place a slice model is called, through its task: the task's
    `predict` outputs (probabilities [B, 6]; segmentation also pred_mask
    [B, H, W]), plus `features` [B, F] for classifiers feeding a sequence model
    and `maps` [B, H, W] float16 for segmentation members feeding a weight
    model. A segmentation member trained on windows (manifest task `patch` >
    0, seed 002's patch U-Net) sees the slice as its training run's evaluation
    did: windows of `patch` pixels every `stride`, averaged where they overlap
    (`ich_jax.models.maps.sliding_window`, inside the jitted call), then the
    task's closing/opening.
    """
    import jax

    out = {}
    if member.role == "classifier" and member.name in self._needs_features:
      out.update(member.jitted("export")(member.state, batch))   # features and probabilities, one pass
    else:
      out.update(member.jitted("predict")(member.state, batch))
    if member.role == "segmentation" and member.name in self._needs_maps:
      out["maps"] = member.jitted("export")(member.state, batch)["maps"]
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

  def _batched(self, member: Member, inputs: Mapping[str, np.ndarray], n: int, batch_size: int, bar) -> dict:
    """`slice_outputs` over n slices in batches of `batch_size`, the last padded (one shape, one compilation)."""
    pieces: dict[str, list] = {}
    for lo in range(0, n, batch_size):
      hi = min(n, lo + batch_size)
      batch = {}
      for k, v in inputs.items():
        chunk = v[lo:hi]
        if hi - lo < batch_size:
          chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - (hi - lo), axis=0)])
        batch[k] = chunk
      for k, v in self.slice_outputs(member, batch).items():
        pieces.setdefault(k, []).append(v[:hi - lo])
      if bar is not None:
        bar.update(hi - lo)
    return {k: np.concatenate(v) for k, v in pieces.items()}

  def _sequence_outputs(self, member: Member, results: Mapping[str, dict], z: np.ndarray) -> dict:
    """A sequence member on the whole series, inputs built as ich_jax.data.stage_exports builds them from exports."""
    import jax

    from ich_jax.grid import slice_gaps

    n = len(z)
    length = -(-n // SEQUENCE_BUCKET) * SEQUENCE_BUCKET
    valid = np.arange(length) < n

    def pad(x):
      out = np.zeros((length,) + x.shape[1:], np.float32)
      out[:n] = x
      return out

    sources = [results[name] for name in member.entry["inputs"]]
    if member.task.inputs == "features":
      # Each feature set zero-padded to the largest F (stage_exports.SeriesFeatureSource), exports without
      # features skipped.
      feats = [s["features"] for s in sources if "features" in s]
      width = max(f.shape[1] for f in feats)
      stacked = np.zeros((n, len(feats), width), np.float32)
      for j, f in enumerate(feats):
        stacked[:, j, :f.shape[1]] = f
      batch = {"features": pad(stacked)[None], "slice_valid": valid[None]}
    else:
      preds = np.stack([s["probabilities"] for s in sources], axis=1).astype(np.float32)
      zz = pad(np.asarray(z, np.float32))[None]
      gap = np.asarray(slice_gaps(zz, valid[None]), np.float32)
      batch = {"predictions": pad(preds)[None], "gap": gap, "slice_valid": valid[None]}
    out = jax.device_get(member.jitted("predict")(member.state, batch))
    return {"probabilities": np.asarray(out["probabilities"])[0, :n]}

  def _ensemble_outputs(self, member: Member, results: Mapping[str, dict], images, n: int, batch_size: int,
                        bar) -> dict:
    # float16 → float32, as the weight model read the base maps it was trained on (ich_jax.data.base_maps).
    maps = np.stack([results[name]["maps"] for name in member.entry["inputs"]], axis=-1).astype(np.float32)
    return self._batched(member, {"maps": maps, "image": images}, n, batch_size, bar)

  # --- A study -----------------------------------------------------------------------------------------

  def preprocess(self, records: Sequence[dict]) -> dict:
    """Slice records (HU `image` [H, W] int16, `series_id`, `slice_index`) → {plan: images [S, h, w, C]}.

    The training and evaluation preprocessing itself (`slice_inputs.load`: the
    channel recipe with its neighbour rule, windowing or clip-rescale, resizing),
    once per distinct plan among the members.
    """
    from ich_jax.data import series_index, slice_inputs

    source = series_index.SeriesSource(list(records))
    images = {}
    for m in self.members.values():
      if m.plan is not None and m.plan not in images:
        images[m.plan] = np.stack([slice_inputs.load(source, m.plan, i)["image"] for i in range(len(source))])
    return images

  def predict(self, images: Mapping, z_positions: np.ndarray, *, batch_size: int = 32, progress: bool = False) -> dict:
    """Every member on the study's preprocessed slices (`preprocess`) → the bundle's outputs.

    Returns {"probabilities": [S, 6] float32 (outputs.probabilities), "members": {name: outputs},
    and "pred_mask" [S, h, w] uint8 at the mask member's input size when the bundle predicts masks}.
    """
    n = len(z_positions)
    bar = None
    slice_members = [m for m in self.members.values() if m.role in SLICE_ROLES]
    if progress:
      from tqdm import tqdm
      bar = tqdm(total=n * len(slice_members), desc="model", unit="slice", disable=None, leave=False)
    results: dict[str, dict] = {}
    try:
      for m in self.members.values():
        if m.role in ("classifier", "segmentation"):
          results[m.name] = self._batched(m, {"image": images[m.plan]}, n, batch_size, bar)
        elif m.role == "ensemble_weights":
          results[m.name] = self._ensemble_outputs(m, results, images[m.plan], n, batch_size, bar)
        else:
          results[m.name] = self._sequence_outputs(m, results, z_positions)
    finally:
      if bar is not None:
        bar.close()
    for name, r in results.items():
      p = r["probabilities"]
      if not np.isfinite(p).all():
        bad = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise BundleError(f"{self.directory}: member {name!r} predicted a non-finite probability at slice {bad}: "
                          f"{p[bad].tolist()}")
    names = self.outputs["probabilities"]["members"]
    out = {"probabilities": np.mean([results[k]["probabilities"] for k in names], axis=0).astype(np.float32),
           "members": results}
    if self.has_mask:
      out["pred_mask"] = results[self.outputs["mask"]]["pred_mask"].astype(np.uint8)
    return out

  def gradcam(self, images: Mapping, rows: Sequence[int], class_index: int = 0, *, batch: int) -> np.ndarray | None:
    """Grad-CAM [len(rows), h, w] of the `outputs.gradcam` member for `class_index` on slices `rows`; None without one.

    `batch`: the fixed batch the call is padded to (one compilation).
    """
    name = self.outputs.get("gradcam")
    if name is None or not len(rows):
      return None
    import jax

    from ich_jax.models import gradcam

    member = self.members[name]
    if class_index not in self._gradcam_fns:
      graphdef = member.graphdef
      self._gradcam_fns[class_index] = jax.jit(lambda state, x: gradcam.grad_cam(graphdef, state, x, class_index))
    x = images[member.plan][np.asarray(rows)]
    x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)]) if len(x) < batch else x
    try:
      cam = self._gradcam_fns[class_index](member.state, x)
    except (AttributeError, ValueError) as e:
      # A classifier whose logits do not come from `classify(features_map)` (small_cnn with a blood-map
      # decoder) has no Grad-CAM of eq. 2–3; the overview then shows the slices without one.
      self.gradcam_error = f"member {name!r}: {e}"
      self.outputs = {**self.outputs, "gradcam": None}
      return None
    return np.asarray(jax.device_get(cam))[:len(rows)]


def load(directory, *, expected_sha256: str | None = None) -> Bundle:
  """Loads a bundle (hashes checked first, and again on the bytes loaded); needs nothing but the folder and
  ich_jax. `expected_sha256`: refuse unless the manifest is the one `verify` printed (`read_manifest`)."""
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory, expected_sha256=expected_sha256)
  members = {e["name"]: _load_member(directory, manifest, e) for e in manifest["members"]}
  return Bundle(directory, manifest, members)


# --- Ensembles of bundles ----------------------------------------------------------------------------


def combine(out, average: Sequence, mask=None, *, threshold: float | None = None) -> pathlib.Path:
  """One bundle from several: per-slice probabilities averaged over the `average` bundles' answers, the mask
  (and its volumes) from `mask`'s (a segmentation bundle; it joins the average only if listed there too).

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
               "params": f"params/{rename[e['name']]}.npz",
               "source": {**e.get("source", {}), "bundle": str(path.absolute()), "bundle_sha256": manifest["sha256"]}}
      with np.load(io.BytesIO(_read_listed(path, manifest, e["params"])), allow_pickle=False) as z:
        members.append((entry, {key: z[key] for key in z.files}))
    o = manifest["outputs"]
    if path in [pathlib.Path(p) for p in average]:
      outputs["probabilities"]["members"] += [rename[n] for n in o["probabilities"]["members"]]
      if outputs.get("gradcam") is None and o.get("gradcam") is not None:
        outputs["gradcam"] = rename[o["gradcam"]]
    if mask is not None and path == pathlib.Path(mask):
      if o.get("mask") is None:
        raise BundleError(f"combine: --mask {path} predicts no mask (no segmentation member in its outputs)")
      outputs["mask"] = rename[o["mask"]]
    seen[str(path)] = manifest["sha256"]
  if threshold is None:
    if len(thresholds) > 1:
      raise BundleError(f"combine: the bundles' thresholds differ {sorted(thresholds)}; pass --threshold")
    threshold = thresholds.pop()
  return write(out, members, outputs, threshold=threshold, meta={"combined_from": seen}, inputs=sources)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ich_jax.bundle", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("combine", help="one bundle from several: averaged probabilities, a segmentation's mask")
  c.add_argument("--out", required=True, help="the new bundle folder")
  c.add_argument("--average", nargs="+", required=True, help="bundles whose per-slice probabilities are averaged")
  c.add_argument("--mask", help="a segmentation bundle whose mask (and volumes) the new bundle reports")
  c.add_argument("--threshold", type=float, help="operating threshold (default: the inputs' common one)")
  e = sub.add_parser("export", help="the bundle of a run folder (an experiment's stage: W/ensemble_all, "
                     "W/fold0/patch_unet), from its config.json and checkpoints")
  e.add_argument("--run", required=True, help="a run folder with config.json and checkpoints/")
  e.add_argument("--out", help="the bundle folder (default RUN/bundle)")
  v = sub.add_parser("verify", help="check a bundle's hashes, print its identity (SHA-256) and list its members")
  v.add_argument("bundle")
  v.add_argument("--expect-sha256", metavar="SHA256", help="also fail unless the identity is this one")
  args = parser.parse_args(argv)
  try:
    if args.command == "combine":
      path = combine(args.out, args.average, args.mask, threshold=args.threshold)
      print(f"Wrote {path} ({len(read_manifest(path)['members'])} members)")
    elif args.command == "export":
      from ich_jax.train import export, loop

      export.export_bundle(loop.read_config(args.run), args.run, args.out)
    else:
      manifest = read_manifest(args.bundle, expected_sha256=args.expect_sha256)
      print(f"{args.bundle}: {FORMAT} v{manifest['version']}, sha256 {manifest['sha256']} (pin it: "
            f"predict --expect-sha256), threshold {manifest['threshold']}")
      print(f"  files: {len(manifest['files'])} listed and hashed: "
            + ", ".join(sorted(manifest["files"])))
      for e in manifest["members"]:
        w = window(e)
        print(f"  {e['name']}: {e['role']} {e['model']['name']}" + (f" <- {e['inputs']}" if e["inputs"] else "")
              + (f", sliding window {w['patch']}/{w['stride']}" if w else ""))
      print(f"  outputs: {json.dumps(manifest['outputs'])}")
  except (BundleError, FileNotFoundError, atomic.NotOurs, lock.Locked) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
