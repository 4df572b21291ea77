"""The engine: a loaded bundle run on a study's slices (preprocessing, every member in dependency order, the
combined answer, Grad-CAM).
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax.bundle.format import MEAN, MEAN_FIELDS, SLICE_ROLES, BundleError, read_manifest
from ich_jax.bundle.members import Member, load_member, window

# Sequence members see a series padded to a multiple of this many slices: few shapes, few compilations.
# The sequence models' outputs at real slices do not depend on padding (ich_jax.models.sequence).
SEQUENCE_BUCKET = 32


class Bundle:
  """A loaded bundle: `members` by name (dependency order), `outputs`, `threshold`; `predict` runs a study."""

  def __init__(self, directory, manifest: dict, members: dict[str, Member]):
    self.directory = pathlib.Path(directory)
    self.manifest = manifest
    self.members = members
    self.outputs = manifest["outputs"]
    self.threshold = float(manifest["threshold"])
    # Which outputs each member must give: features for sequence model 1, maps for the weight model (through a
    # mean member: its inputs).
    self._needs_features = self._through_means({i for m in members.values() if m.role == "sequence"
                                                and m.task.inputs == "features" for i in m.entry["inputs"]})
    self._needs_maps = self._through_means({i for m in members.values() if m.role == "ensemble_weights"
                                            for i in m.entry["inputs"]})
    self._gradcam_fns: dict = {}
    self.gradcam_error: str | None = None

  def _through_means(self, names: set[str]) -> set[str]:
    """`names` and, for each mean member among them, its inputs (recursively): who must give what a mean averages."""
    out = set(names)
    for m in reversed(list(self.members.values())):   # dependency order reversed: a mean before its inputs
      if m.role == MEAN and m.name in out:
        out.update(m.entry["inputs"])
    return out

  def _model_of(self, name: str) -> Member:
    """The member that stands for `name`'s kind: itself, or a mean member's first input (recursively)."""
    m = self.members[name]
    return self._model_of(m.entry["inputs"][0]) if m.role == MEAN else m

  @property
  def hash(self) -> str:
    """The bundle's identity (`manifest_sha256`: what `bundle verify` prints and `--expect-sha256` pins)."""
    return self.manifest["sha256"]

  @property
  def has_mask(self) -> bool:
    return self.outputs.get("mask") is not None

  @property
  def mask_subtypes(self) -> bool:
    """True when the mask labels subtypes (1–5, LABELS index; a detector's: its class's smallest, see
    `mask_classes`); False: 1 = blood of unknown subtype."""
    m = self.members.get(self.outputs.get("mask"))
    return m is not None and (m.role == "detector" or (m.role == "segmentation" and m.task.maps == "subtypes"))

  @property
  def mask_classes(self) -> tuple[tuple[str, ...], ...] | None:
    """A detector mask's classes (groups of subtypes; its label map holds each group's smallest LABELS index,
    ich_jax.train.detection), or None: the mask labels single subtypes, or blood."""
    m = self.members.get(self.outputs.get("mask"))
    return m.task.classes if m is not None and m.role == "detector" else None

  @property
  def detector(self) -> Member | None:
    """The member whose boxes the bundle outputs (`outputs.detections`), or None."""
    return self.members.get(self.outputs.get("detections"))

  @property
  def predicts_subtypes(self) -> bool:
    """False when every probability member is a blood-only segmentation (its subtype columns repeat "any")."""
    return any(m.role in ("classifier", "sequence", "detector")
               or (m.role == "segmentation" and m.task.maps == "subtypes")
               for m in (self._model_of(n) for n in self.outputs["probabilities"]["members"]))

  def warm_up(self, batch_size: int, *, gradcam_batch: int = 0) -> None:
    """Compiles every member for `batch_size` (and Grad-CAM for `gradcam_batch` slices) on a blank slice."""
    images = {m.plan: np.zeros((1, m.plan.image_size, m.plan.image_size, len(m.plan.recipe)), np.float32)
              for m in self.members.values() if m.plan is not None}
    self.predict(images, np.zeros(1), batch_size=batch_size)
    if gradcam_batch and not self.has_mask:
      self.gradcam(images, [0], batch=gradcam_batch)

  def describe(self) -> list[dict]:
    return [{"name": m.name, "role": m.role, "model": m.entry["model"]["name"] if m.entry["model"] else None,
             "inputs": m.entry["inputs"],
             "image_size": m.plan.image_size if m.plan else None, "window": window(m.entry),
             **({"classes": [list(g) for g in m.task.classes]} if m.role == "detector" else {})}
            for m in self.members.values()]

  # --- The per-slice model call -----------------------------------------------------------------

  def slice_outputs(self, member: Member, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One slice-input member on one batch of preprocessed slices → its outputs (numpy).

    The one place a slice model is called, through its task: the task's
    `predict` outputs (probabilities [B, 6]; segmentation also pred_mask
    [B, H, W]; a detector also pred_mask and det_boxes [B, D, 4], det_scores
    [B, D], det_classes [B, D]), plus `features` [B, F] for classifiers feeding a sequence model
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
    """A sequence member on the whole series, inputs built as ich_jax.data.stage_exports builds them
    from exports."""
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

  def _mean_outputs(self, member: Member, results: Mapping[str, dict]) -> dict:
    """A mean member: each of MEAN_FIELDS its inputs all give, averaged as ich_jax.data.stacking.mean_over_models
    averages exports (a float64 sum; float32, maps float16 as an export stores them): seed 003's mean over fold
    models."""
    sources = [results[name] for name in member.entry["inputs"]]
    out = {}
    for key in MEAN_FIELDS:
      if all(key in s for s in sources):
        shapes = {s[key].shape for s in sources}
        if len(shapes) > 1:
          raise BundleError(f"{self.directory}: mean member {member.name!r} averages {key} of shapes "
                            f"{sorted(shapes)} from {member.entry['inputs']}")
        total = np.zeros(sources[0][key].shape, np.float64)
        for s in sources:
          total += s[key]
        out[key] = (total / len(sources)).astype(np.float16 if key == "maps" else np.float32)
    return out

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
    "pred_mask" [S, h, w] uint8 at the mask member's input size when the bundle predicts masks, and
    "detections" when it detects: {"boxes" [S, D, 4] (y1, x1, y2, x2, pixel edges of the detector's h × w
    input), "scores" [S, D] (0: padding), "classes" [S, D] (index into `detector.task.classes`, -1: padding),
    "input_shape" (h, w)}}.
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
        if m.role in ("classifier", "segmentation", "detector"):
          results[m.name] = self._batched(m, {"image": images[m.plan]}, n, batch_size, bar)
        elif m.role == "ensemble_weights":
          results[m.name] = self._ensemble_outputs(m, results, images[m.plan], n, batch_size, bar)
        elif m.role == MEAN:
          results[m.name] = self._mean_outputs(m, results)
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
    if self.detector is not None:
      r, size = results[self.detector.name], self.detector.plan.image_size
      out["detections"] = {"boxes": r["det_boxes"].astype(np.float32), "scores": r["det_scores"].astype(np.float32),
                           "classes": r["det_classes"].astype(np.int32), "input_shape": (size, size)}
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
  members = {e["name"]: load_member(directory, manifest, e) for e in manifest["members"]}
  return Bundle(directory, manifest, members)

