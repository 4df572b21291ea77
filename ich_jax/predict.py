"""Triage a study: a model bundle and a DICOM folder or NIfTI file in, a report a radiologist can read out.

  ich-jax-predict --model BUNDLE --input STUDY --output OUT [--batch-size N]   # = python -m ich_jax.predict
  ich-jax-predict --model BUNDLE --input STUDIES --output OUT --batch          # one sub-folder per study

STUDY is a folder a scanner or PACS wrote (any file names, nested folders,
several series mixed, compressed or not) or a .nii/.nii.gz volume in HU. The
series is chosen from the headers (`ich_jax.data.series_selection`: axial,
non-contrast, soft-tissue kernel, thickness nearest 5 mm; the choice and why
every other series was rejected go into the report), read into HU, sorted
along the slice normal, preprocessed by the training pipeline's own
functions (`ich_jax.data.slice_inputs.load`), batched, and run through the
bundle's jit-compiled models (`ich_jax.bundle`). OUT receives

  predictions.csv   per slice: study_id, series_id, slice_index (z order), sop_uid (DICOM) or source_slice
                    (NIfTI stored index), frame_number (an Enhanced CT file's frame), z_position, prob_any …
                    prob_subdural, and blood_ml with a mask; the format `python -m ich_jax.eval` reads
  report.json       study-level probability and decision per class with the threshold, volumes, the series used
                    and why, the bundle (hash, members), timings (read, preprocess, model, write) in seconds;
                    status "ok", or "incomplete" when the series may lack slices (unreadable files beside it,
                    InstanceNumber gaps, fewer slices than ImagesInAcquisition, a z coverage too short for a
                    head), with the reasons in "completeness"; detector bundles (seed 001's Mask R-CNN) also
                    "detections": every kept box scoring at least the threshold (`detection_entries`)
  report.md         the same for people (an incomplete study says INCOMPLETE at the top)
  mask.nii.gz       bundles with a segmentation or detector member: the predicted blood mask on the input's
                    voxel grid (0 = none; 1–5 = the LABELS index of the subtype when the model segments subtypes,
                    else 1; a detector's: its class's smallest LABELS index, so EDH/SDH reads 1)
  overview.png      the most suspicious slices in the brain window with the Grad-CAM (classifier bundles) or
                    the predicted mask, a detector's boxes with their class and score, and their probabilities
  seg.dcm           DICOM input and a mask: the mask as a DICOM Segmentation (one segment per label, SNOMED CT
                    coded), each frame referencing its source instance, for a viewer to overlay (`ich_jax.pacs`)
  overview_sc.dcm   DICOM input: a Secondary Capture in the study (new series) of the findings (probability,
                    threshold, decision per class) above overview.png; report.json's "dicom_outputs" lists both
                    (UIDs) or says why one was not written

Batch mode is explicit (`--batch`): then `--input` holds one study per entry,
each sub-folder (a DICOM study) or .nii/.nii.gz file, and OUT gets one folder
per study plus summary.csv (one row per study: status ok, incomplete or
error, the error, the study probabilities). A study that fails is listed with
its error and the others go on; the exit status is 1 if any failed. Without
`--batch` a folder holding several studies is an error, not a guess. Output
folders are named after the studies, made unique when two would collide
(`s1/` and `s1.nii.gz` become `s1` and `s1.nii.gz`); the summary's `output`
column names each.

OUT is only ever replaced when ich-jax wrote it (a marker file in it): an
existing folder of anything else is refused, as is an OUT that is, holds or
lies inside the input or the bundle. One process writes an OUT at a time (a
lock naming the holder's host and pid). With --batch, OUT itself is never
replaced, only each study's folder in it; a study that fails loses the output
an earlier run wrote for it. `--expect-sha256` pins the bundle to the one
`python -m ich_jax.bundle verify` printed.

Research software: not a medical device, not for clinical decisions.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, SHORT, SUBTYPES, atomic, lock, provenance, size_bin
from ich_jax.bundle.format import provenance_of
from ich_jax.data import study as study_lib
from ich_jax.eval.formatting import MISSING, number
from ich_jax.jsonable import jsonable

REPORT_FORMAT = "ich-jax-prediction"
REPORT_VERSION = 1
OVERVIEW_SLICES = 6
OVERVIEW_SIZE = 256          # montage tiles are resized to at most this many pixels
DISCLAIMER = "Research software: not a medical device; not for clinical decisions."


@dataclasses.dataclass(frozen=True)
class Options:
  batch_size: int = 32
  min_slices: int = 1
  preferred_thickness_mm: float = 5.0
  allow_uneven_spacing: bool = False
  require_hu: bool = True
  assume_intercept: float | None = None      # read DICOM slices without RescaleSlope/RescaleIntercept with it
  min_coverage_mm: float = study_lib.MIN_COVERAGE_MM          # a shorter z coverage is an incomplete head ...
  coverage_max_gap_mm: float = study_lib.COVERAGE_MAX_GAP_MM  # ... at slice gaps up to this
  strict: bool = False                       # an incomplete study is an error, not a report marked incomplete
  max_study_gb: float | None = None          # refuse a study whose prediction needs more (None: half the RAM)
  overview_slices: int = OVERVIEW_SLICES
  progress: bool = True


class _Clock:
  """Wall and CPU seconds per stage (CPU time survives a loaded machine better; XLA threads add to it)."""

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.cpu: dict[str, float] = {}
    self._stage = None

  def start(self, stage: str):
    self.stop()
    self._stage, self._t, self._c = stage, time.perf_counter(), time.process_time()

  def stop(self):
    if self._stage is not None:
      self.wall[self._stage] = self.wall.get(self._stage, 0.0) + time.perf_counter() - self._t
      self.cpu[self._stage] = self.cpu.get(self._stage, 0.0) + time.process_time() - self._c
      self._stage = None

  def as_dict(self) -> dict:
    total = sum(self.wall.values())
    return {**{f"{k}_s": round(v, 4) for k, v in self.wall.items()}, "total_s": round(total, 4),
            "cpu_s": {k: round(v, 4) for k, v in self.cpu.items()}}


# --- From model outputs to findings (pure) -------------------------------------------------------------


def study_findings(prob: np.ndarray, threshold: float, *, subtypes_predicted: bool = True,
                   classes: Sequence[Sequence[str]] | None = None) -> dict:
  """Study-level probability (the most suspicious slice's, seeds 000 and 003), decision and that slice, per class.

  `classes`: the groups of subtypes of a detector whose scores are the probabilities: a subtype in a group
  of several carries the group's score (noted), one in no group is not predicted.
  """
  from ich_jax.eval.detection import class_name

  group_of = {s: g for g in (classes or ()) for s in g}
  out = {}
  for c, name in enumerate(LABELS):
    k = int(np.argmax(prob[:, c]))
    p = float(prob[k, c])
    entry = {"probability": p, "positive": bool(p >= threshold), "slice_index": k}
    if c and not subtypes_predicted:
      entry.update(probability=None, positive=None, note="not predicted: the bundle segments blood, not subtypes")
    elif c and classes is not None and name not in group_of:
      entry.update(probability=None, positive=None, note="not predicted: no class of the detector holds it")
    elif c and len(group_of.get(name, ())) > 1:
      entry["note"] = f"the detector's {class_name(group_of[name])} class: its score stands for all its subtypes"
    out[name] = entry
  return out


def detection_entries(found: Mapping, classes: Sequence[Sequence[str]], native_shape: tuple[int, int],
                      threshold: float, per_slice: Mapping[str, Sequence] | None = None) -> list[dict]:
  """A detector's kept boxes (`Bundle.predict`'s "detections") scoring at least `threshold` → report entries,
  by slice (z order), then score, highest first.

  The threshold is the bundle's operating one, so the list is exactly what makes the study positive: a
  slice's "any" probability is its best detection's score. Boxes go from the detector's input to the study's
  slice grid (`resample.scale_boxes`: the inverse of the preprocessing's resize, which has no crop). Entry:
  slice_index, the `per_slice` fields at that slice (e.g. sop_uid, z_position), class (e.g. "EDH/SDH"),
  subtypes (the group it stands for), score, box [y1, x1, y2, x2] (pixel edges: rows y, columns x of the
  slice as read; y2 − y1 rows tall).
  """
  from ich_jax.data import resample
  from ich_jax.eval.detection import class_name

  boxes = resample.scale_boxes(found["boxes"], found["input_shape"], native_shape)
  scores, cls = np.asarray(found["scores"]), np.asarray(found["classes"])
  out = []
  for i in range(len(scores)):
    kept = np.flatnonzero((cls[i] >= 0) & (scores[i] >= threshold))
    for d in kept[np.argsort(-scores[i][kept], kind="stable")]:
      group = classes[int(cls[i, d])]
      out.append({"slice_index": i, **{k: v[i] for k, v in (per_slice or {}).items()},
                  "class": class_name(group), "subtypes": list(group), "score": float(scores[i, d]),
                  "box": [float(v) for v in boxes[i, d]]})
  return out


def upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """[S, h, w] mask at a model's input size → [S, H, W] on the study's grid (nearest, the pipeline's rule)."""
  from ich_jax.data import resample

  h, w = mask.shape[1:]
  rows, cols = resample.nearest_rows(h, shape[0]), resample.nearest_rows(w, shape[1])
  return np.ascontiguousarray(mask[:, rows][:, :, cols])


def largest_bleed(mask: np.ndarray) -> np.ndarray:
  """The largest 3-D connected component (26-connectivity) of a binary [S, H, W] mask; empty if none."""
  from scipy import ndimage

  labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
  if n == 0:
    return np.zeros(mask.shape, bool)
  sizes = np.bincount(labels.ravel())[1:]
  return labels == (int(np.argmax(sizes)) + 1)


def volumes(mask: np.ndarray, spacing_mm: tuple[float, float, float], *, subtypes: bool,
            classes: Sequence[Sequence[str]] | None = None) -> dict:
  """Per-subtype volume (mL) and size bin (seed 001) of a predicted label map, and ABC/2 of the largest
  intraparenchymal bleed (of the largest bleed of any kind when the model does not segment subtypes).

  `classes`: a detector's groups of subtypes, its label map read as groups (any LABELS index of a group is
  the group, `ich_jax.eval.detection.class_lut`): volumes per class ("per_class": {"EDH/SDH": {"subtypes",
  "ml", "size_bin"}}) instead of per subtype, ABC/2 of the largest bleed of intraparenchymal's class.
  """
  from ich_jax.eval import metrics as M
  from ich_jax.eval.detection import class_lut, class_name

  blood = mask > 0
  out = {"spacing_mm": [float(s) for s in spacing_mm], "subtypes_segmented": subtypes,
         "blood": {"ml": M.volume_ml(blood, spacing_mm), "size_bin": size_bin(M.volume_ml(blood, spacing_mm))}}
  if classes is not None:
    groups = [tuple(g) for g in classes]
    of_class = class_lut(groups)[mask]
    out["per_class"] = {}
    for c, group in enumerate(groups):
      ml = M.volume_ml(of_class == c, spacing_mm)
      out["per_class"][class_name(group)] = {"subtypes": list(group), "ml": ml, "size_bin": size_bin(ml)}
    iph = [c for c, g in enumerate(groups) if "intraparenchymal" in g]
    target, what = ((of_class == iph[0], f"largest {class_name(groups[iph[0]])} bleed") if iph else
                    (blood, "largest bleed (no detector class holds intraparenchymal blood)"))
  elif subtypes:
    out["per_subtype"] = {}
    for k, name in enumerate(SUBTYPES, start=1):
      ml = M.volume_ml(mask == k, spacing_mm)
      out["per_subtype"][name] = {"ml": ml, "size_bin": size_bin(ml)}
    target, what = mask == LABELS.index("intraparenchymal"), "largest intraparenchymal bleed"
  else:
    target, what = blood, "largest bleed (any subtype: the model segments blood, not subtypes)"
  bleed = largest_bleed(target)
  slices = np.flatnonzero(bleed.any(axis=(1, 2)))
  out["abc2"] = {"of": what, "ml": M.abc2_ml(bleed, spacing_mm) if bleed.any() else None,
                 "voxel_ml": M.volume_ml(bleed, spacing_mm) if bleed.any() else None,
                 "slices": [int(slices[0]), int(slices[-1])] if slices.size else None}
  return out


def suspicious_slices(prob: np.ndarray, k: int) -> list[int]:
  """The k slices with the highest probability of any hemorrhage, most suspicious first."""
  order = np.argsort(-prob[:, 0], kind="stable")
  return [int(i) for i in order[:k]]


def study_memory_bytes(slices: int, rows: int, cols: int, bundle) -> int:
  """The memory predicting a study of this size holds at its peak, estimated from the headers alone: the HU
  volume (int16), the mask on the study's grid and its NIfTI copy (uint8, segmenting bundles), and each
  member plan's float32 inputs, twice (stacked from per-slice arrays)."""
  voxels = slices * rows * cols
  total = 2 * voxels + (2 * voxels if bundle.has_mask else 0)
  for plan in {m.plan for m in bundle.members.values() if m.plan is not None}:
    total += 2 * slices * plan.image_size ** 2 * len(plan.recipe) * 4
  return total


def memory_budget_gb(options: Options) -> float:
  """`options.max_study_gb`, or half this machine's physical memory."""
  if options.max_study_gb is not None:
    return float(options.max_study_gb)
  import os
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 1e9


def _size_check(bundle, options: Options):
  budget = memory_budget_gb(options)

  def check(slices: int, rows: int, cols: int) -> None:
    need = study_memory_bytes(slices, rows, cols, bundle) / 1e9
    if need > budget:
      raise study_lib.StudyError(
          f"too large to predict in memory: {slices} slices of {rows}x{cols} need about {need:.2f} GB, over the "
          f"budget of {budget:.2f} GB (--max-study-gb; default half the machine's memory); refused before reading "
          "its pixels")

  return check


# --- Writing ----------------------------------------------------------------------------------------------


def tile_boxes(found: Sequence[Mapping], slice_index: int, native_shape: tuple[int, int],
               tile_shape: tuple[int, int]) -> list[dict]:
  """The `detection_entries` on one slice as an overview tile draws them: {"box" in the tile's pixels,
  "label": class and score}."""
  from ich_jax.data import resample

  return [{"box": [float(v) for v in resample.scale_boxes(d["box"], native_shape, tile_shape)],
           "label": f"{d['class']} {d['score']:.2f}"} for d in found if d["slice_index"] == slice_index]


def _overview_tiles(study, images_by_plan, bundle, outputs, rows, mask_native,
                    found=None) -> tuple[list[dict], str]:
  from ich_jax.data import resample, windows
  from ich_jax.data.windows import BRAIN_WINDOW
  from ich_jax.eval import plots

  prob = outputs["probabilities"]
  size = min(OVERVIEW_SIZE, max(study.hu.shape[1:]))
  cams = None if mask_native is not None else bundle.gradcam(images_by_plan, rows, batch=OVERVIEW_SLICES)
  # A Grad-CAM is normalised to its own maximum, so on a slice of probability 0.01 it would look as sure as on
  # a positive one: each map is scaled by its slice's probability of any hemorrhage and drawn from
  # plots.HEAT_FLOOR up, so a slice below that probability shows none.
  label = ("predicted mask" if mask_native is not None else
           (f"Grad-CAM (any) × slice probability, shown from {plots.HEAT_FLOOR:g}" if cams is not None else ""))
  if found is not None:
    label = "; ".join(t for t in (label, f"boxes ≥ {bundle.threshold:g}") if t)
  tiles = []
  for j, i in enumerate(rows):
    example = {"image": windows.apply_window(study.hu[i], *BRAIN_WINDOW)[..., None]}
    if mask_native is not None:
      example["mask"] = mask_native[i]
    example = resample.resize(example, size)
    overlay, kind = None, "mask"
    if mask_native is not None:
      overlay = example["mask"]
    elif cams is not None:
      cam = resample.resize({"image": cams[j][..., None]}, size)["image"][..., 0]
      peak = float(cam.max())
      overlay, kind = (cam / peak if peak > 0 else np.zeros_like(cam)) * float(prob[i, 0]), "heat"
    sub = 1 + int(np.argmax(prob[i, 1:]))
    caption = (f"slice {i} (z {study.z_positions[i]:.1f} mm)\nICH {prob[i, 0]:.2f}"
               + (f" · {SHORT[LABELS[sub]]} {prob[i, sub]:.2f}" if bundle.predicts_subtypes else ""))
    tiles.append({"image": example["image"][..., 0], "overlay": overlay, "kind": kind, "caption": caption,
                  "boxes": tile_boxes(found or (), i, study.hu.shape[1:], (size, size))})
  return tiles, label


def _markdown(report: Mapping) -> str:
  s = report["series"]
  lines = [f"# Hemorrhage triage: {report['study_id']}", "", f"_{DISCLAIMER}_", "",
           f"- Input: `{report['input']}` ({report['source']})",
           f"- Series: {s['description']!r} `{s['series_uid']}`, {s['num_slices']} slices, "
           f"{s['spacing_mm'][1]:.3g}×{s['spacing_mm'][2]:.3g} mm pixels, slice gap {s['spacing_mm'][0]:.3g} mm",
           f"- Model bundle: `{report['bundle']['path']}` (sha256 {report['bundle']['sha256'][:12]}…; "
           + ", ".join(f"{m['name']} = {m['role']} {m['model'] or 'of ' + ', '.join(m['inputs'])}"
                       for m in report["bundle"]["members"]) + ")",
           f"- Threshold: {report['threshold']} (a study is positive when its most suspicious slice reaches it)",
           f"- Made by: {provenance.describe(report['software'])}; the bundle's members were trained on "
           + _trained_on(report["bundle"]["provenance"]), ""]
  if report["status"] == "incomplete":   # first, above the findings it qualifies
    lines[4:4] = ["**INCOMPLETE SERIES**: slices may be missing; the findings below cover only the slices present.",
                  "", *(f"- {r}" for r in report["completeness"]["reasons"]), ""]
  if s.get("selection"):
    lines += ["Series choice: " + s["selection"]["reason"], ""]
  lines += ["## Findings", "", "| | probability | decision | most suspicious slice |", "|---|---|---|---|"]
  for name in LABELS:
    f = report["findings"][name]
    decision = MISSING if f["positive"] is None else ("**POSITIVE**" if f["positive"] else "negative")
    lines.append(f"| {name} | {number(f['probability'])} | {decision} | {f['slice_index']} |")
  lines.append("")
  v = report.get("volumes")
  if v:
    lines += ["## Volumes (predicted mask)", "", "| | mL | size bin |", "|---|---|---|",
              f"| all blood | {v['blood']['ml']:.2f} | {v['blood']['size_bin']} |"]
    for name, e in (v.get("per_subtype") or {}).items():
      lines.append(f"| {name} | {e['ml']:.2f} | {e['size_bin']} |")
    for name, e in (v.get("per_class") or {}).items():
      lines.append(f"| {name} ({', '.join(e['subtypes'])}) | {e['ml']:.2f} | {e['size_bin']} |")
    a = v["abc2"]
    lines += ["", f"ABC/2 of the {a['of']}: " + ("none" if a["ml"] is None else
              f"{a['ml']:.2f} mL (its voxel volume {a['voxel_ml']:.2f} mL, slices {a['slices'][0]}–{a['slices'][1]})"),
              ""]
  elif report.get("volumes_note"):
    lines += [f"Volumes: {report['volumes_note']}", ""]
  if "detections" in report:
    lines += _markdown_detections(report)
  if report["notes"]:
    lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
  t = report["timings"]
  lines += ["## Timings", "", " · ".join(f"{k[:-2]} {t[k]:.3f} s" for k in ("read_s", "preprocess_s", "model_s",
                                                                          "write_s", "total_s") if k in t), ""]
  if "overview.png" in report["outputs"]:
    lines += ["![overview](overview.png)", ""]
  return "\n".join(lines)


MARKDOWN_DETECTIONS = 30    # rows of report.md's detection table; report.json lists them all


def _trained_on(bundle_provenance: Mapping) -> str:
  """Each member's training data for report.md: "cls: synthetic_ich/small v1.2.0, split 'train'; ..."."""
  parts = []
  for name, run in bundle_provenance["members"].items():
    d = (run or {}).get("dataset") or {}
    if not d:
      parts.append(f"{name}: not recorded")
    elif d.get("name"):
      parts.append(f"{name}: {d['name']}/{d.get('config')} v{d.get('version') or '?'}, split {d.get('train_split')!r}")
    else:  # a run on other runs' exports (seed 003's sequence models)
      parts.append(f"{name}: the exports of {', '.join(d.get('exports') or ['?'])}")
  return "; ".join(parts) or "(no trained members)"


def _markdown_detections(report: Mapping) -> list[str]:
  found, d = report["detections"], report["detector"]
  lines = ["## Detections", "",
           f"Boxes scoring at least {report['threshold']} ({len(found)}; {d['below_threshold']} kept below it not "
           "listed), in pixels of the slice as read (rows y, columns x).", ""]
  if not found:
    return lines
  lines += ["| slice | z (mm) | class | score | box y1, x1, y2, x2 |", "|---|---|---|---|---|"]
  for e in found[:MARKDOWN_DETECTIONS]:
    lines.append(f"| {e['slice_index']} | {e['z_position']:.1f} | {e['class']} | {e['score']:.3f} | "
                 + ", ".join(f"{v:.1f}" for v in e["box"]) + " |")
  if len(found) > MARKDOWN_DETECTIONS:
    lines.append(f"\n… and {len(found) - MARKDOWN_DETECTIONS} more in report.json.")
  return lines + [""]


# --- One study ---------------------------------------------------------------------------------------------


def predict_study(bundle, input_path, out_dir, options: Options = Options()) -> dict:
  """Predicts one study into `out_dir` (written beside and swapped into place); returns the report.

  Before anything is read, `out_dir` is refused (`atomic.NotOurs`) if it is,
  holds or lies inside the input or the bundle, or is a folder ich-jax did
  not write as a prediction; and (`lock.Locked`) while another process writes it.
  """
  out_dir = pathlib.Path(out_dir)
  atomic.check_output(out_dir, "prediction", inputs=[input_path, bundle.directory])
  with lock.FolderLock(out_dir, beside=True, what="prediction output"):
    return _predict_study(bundle, input_path, out_dir, options)


def _predict_study(bundle, input_path, out_dir: pathlib.Path, options: Options) -> dict:
  clock = _Clock()
  clock.start("read")
  study = study_lib.read_study(input_path, min_slices=options.min_slices,
                               preferred_thickness_mm=options.preferred_thickness_mm,
                               allow_uneven_spacing=options.allow_uneven_spacing, require_hu=options.require_hu,
                               assume_intercept=options.assume_intercept, min_coverage_mm=options.min_coverage_mm,
                               coverage_max_gap_mm=options.coverage_max_gap_mm, require_complete=options.strict,
                               check_size=_size_check(bundle, options))
  clock.start("preprocess")
  images = bundle.preprocess(study.records())
  clock.start("model")
  progress = options.progress and study.num_slices > options.batch_size
  outputs = bundle.predict(images, study.z_positions, batch_size=options.batch_size, progress=progress)
  prob = outputs["probabilities"]
  rows = suspicious_slices(prob, min(options.overview_slices, study.num_slices))
  detector, found = bundle.detector, None
  if detector is not None:
    id_key, ids = _slice_ids(study)
    found = detection_entries(outputs["detections"], detector.task.classes, study.hu.shape[1:], bundle.threshold,
                              per_slice={id_key: ids, "z_position": study.z_positions.tolist()})
  tiles = label = None
  if not bundle.has_mask and options.overview_slices:
    # Grad-CAM is model work: computed here, drawn below.
    tiles, label = _overview_tiles(study, images, bundle, outputs, rows, None, found)
  clock.start("write")
  notes = list(study.notes)
  if bundle.gradcam_error:
    notes.append(f"no Grad-CAM overlay: {bundle.gradcam_error}")
  report = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "disclaimer": DISCLAIMER,
            "input": str(pathlib.Path(input_path).absolute()), "source": study.source, "study_id": study.study_id,
            "status": "ok" if study.completeness["status"] == "complete" else "incomplete",
            "completeness": study.completeness,
            "series": {"series_uid": study.series_id, "description": study.description,
                       "num_slices": study.num_slices, "spacing_mm": list(study.spacing),
                       "slice_thickness_mm": study.slice_thickness, "matrix": list(study.hu.shape[1:]),
                       "selection": study.selection, "hu_check": study.hu_check},
            # What made this report: the bundle's provenance (its software and each member's run) and ours.
            "bundle": {"path": str(bundle.directory.absolute()), "sha256": bundle.hash, "members": bundle.describe(),
                       "provenance": provenance_of(bundle.manifest)},
            "software": provenance.software(),
            "threshold": bundle.threshold,
            "findings": study_findings(prob, bundle.threshold, subtypes_predicted=bundle.predicts_subtypes,
                                       classes=_probability_classes(bundle)),
            "suspicious_slices": rows, "notes": notes}
  if detector is not None:
    from ich_jax.eval.detection import class_name

    d = outputs["detections"]
    report["detector"] = {"member": detector.name, "input_shape": list(d["input_shape"]),
                          "classes": [{"class": class_name(g), "subtypes": list(g)} for g in detector.task.classes],
                          "below_threshold": int(((d["classes"] >= 0) & (d["scores"] < bundle.threshold)).sum())}
    report["detections"] = found
  tmp = atomic.begin(out_dir, "prediction", input=str(pathlib.Path(input_path).absolute()))
  try:
    _write_outputs(tmp, study, bundle, outputs, images, rows, report, tiles, label, clock, options)
  except BaseException:
    atomic.abandon(tmp)
    raise
  atomic.commit(tmp, out_dir)
  return report


def _slice_ids(study) -> tuple[str, list]:
  """Each slice's identity in its source: ("sop_uid", SOPInstanceUIDs) for DICOM, ("source_slice", the NIfTI
  file's stored slice indices) for NIfTI."""
  if study.source == "dicom":
    return "sop_uid", list(study.slice_uids)
  return "source_slice", [int(i) for i in study.source_index]


def _probability_classes(bundle):
  """The detector's classes when its scores alone are the bundle's probabilities (`study_findings`), else None."""
  d = bundle.detector
  return d.task.classes if d is not None and bundle.outputs["probabilities"]["members"] == [d.name] else None


def _write_outputs(tmp, study, bundle, outputs, images, rows, report, tiles, label, clock, options) -> None:
  from ich_jax.eval.prediction_files import write_predictions_csv

  prob = outputs["probabilities"]
  preds = {"study_id": np.full(study.num_slices, study.study_id), "series_id": np.full(study.num_slices, study.series_id),
           "slice_index": np.arange(study.num_slices), "z_position": study.z_positions, "probabilities": prob}
  id_key, ids = _slice_ids(study)
  extra = [id_key, "z_position"]
  preds[id_key] = np.asarray(ids)
  frames = getattr(study.geometry, "frame_numbers", None) if study.source == "dicom" else None
  if frames and max(frames) > 1:
    # An Enhanced (multi-frame) CT: its slices share one SOPInstanceUID, so each row also names its frame.
    preds["frame_number"] = np.asarray(frames, np.int64)
    extra.insert(1, "frame_number")
  written = ["predictions.csv", "report.json", "report.md"]
  if bundle.has_mask:
    mask_native = upsample_mask(outputs["pred_mask"], study.hu.shape[1:])
    spacing = study.spacing
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
      report["volumes"], report["volumes_note"] = None, f"no volumes: the slice spacing {spacing} is unknown"
    else:
      report["volumes"] = volumes(mask_native, spacing, subtypes=bundle.mask_subtypes, classes=bundle.mask_classes)
      preds["blood_ml"] = (mask_native > 0).sum(axis=(1, 2)) * float(np.prod(spacing)) / 1000.0
      extra.append("blood_ml")
    import nibabel as nib
    nib.save(study.mask_image(mask_native), str(tmp / "mask.nii.gz"))
    written.append("mask.nii.gz")
    if options.overview_slices:
      tiles, label = _overview_tiles(study, images, bundle, outputs, rows, mask_native, report.get("detections"))
  write_predictions_csv(preds, tmp / "predictions.csv", extra_columns=extra)
  if tiles:
    from ich_jax.eval import plots
    plots.study_overview(tiles, tmp / "overview.png", title=f"{study.path.name}: most suspicious slices",
                         overlay_label=label)
    written.append("overview.png")
  from ich_jax import pacs

  # DICOM objects for a PACS (seg.dcm, overview_sc.dcm): what was written, or why not, in "dicom_outputs".
  report["dicom_outputs"] = pacs.write_outputs(
      tmp, study, report, mask=mask_native if bundle.has_mask else None, subtypes=bundle.mask_subtypes,
      classes=bundle.mask_classes, overview=tmp / "overview.png" if "overview.png" in written else None)
  written += pacs.written(report["dicom_outputs"])
  report["notes"] += pacs.notes(report["dicom_outputs"])
  report["outputs"] = written
  clock.stop()
  report["timings"] = clock.as_dict()
  (tmp / "report.md").write_text(_markdown(report))
  (tmp / "report.json").write_text(json.dumps(jsonable(report), indent=2))


# --- Many studies ------------------------------------------------------------------------------------------


SUMMARY_COLUMNS = ("study", "status", "error", "input", "output", "study_id", "series_uid", "num_slices",
                   *(f"prob_{n}" for n in LABELS), *(f"positive_{n}" for n in LABELS), "blood_ml", "seconds")


def study_entries(folder) -> list[pathlib.Path]:
  """A batch folder's studies: its sub-folders (DICOM) and .nii/.nii.gz files, sorted by name."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise study_lib.StudyError(f"{folder}: --batch needs a folder holding one sub-folder or NIfTI file per study")
  entries = sorted(p for p in folder.iterdir()
                   if (p.is_dir() and not p.name.startswith(".")) or p.name.lower().endswith(study_lib.NIFTI_SUFFIXES))
  if not entries:
    raise study_lib.StudyError(f"{folder}: no studies (no sub-folders, no .nii/.nii.gz files) for --batch")
  return entries


def _study_name(entry: pathlib.Path) -> str:
  name = entry.name
  for suffix in (".nii.gz", ".nii"):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


# Names a study's output folder must not take: the batch's own files.
_RESERVED = {"summary.csv"}


def output_names(entries: Sequence[pathlib.Path]) -> list[str]:
  """One output folder name per study entry, unique (compared case-insensitively, for case-insensitive disks).

  A study's name is its entry's without .nii/.nii.gz. Entries whose names
  would collide (`s1/` and `s1.nii.gz`) are all named by their whole entry
  name instead (`s1`, `s1.nii.gz`), and any name still taken gets `-2`, `-3`, …
  """
  stems = [_study_name(e) for e in entries]
  counts: dict[str, int] = {}
  for n in stems:
    counts[n.lower()] = counts.get(n.lower(), 0) + 1
  names, taken = [], set()
  for entry, stem in zip(entries, stems):
    base = entry.name if counts[stem.lower()] > 1 else stem
    name, k = base, 2
    while name.lower() in taken or name.lower() in _RESERVED:
      name, k = f"{base}-{k}", k + 1
    taken.add(name.lower())
    names.append(name)
  return names


def _summary_row(name, entry, out, report=None, error=None, seconds=0.0) -> dict:
  row = dict.fromkeys(SUMMARY_COLUMNS, "")
  row.update(study=name, input=str(entry), output=str(out), seconds=f"{seconds:.3f}")
  if error is not None:
    row.update(status="error", error=error)
    return row
  row.update(status=report["status"], study_id=report["study_id"], series_uid=report["series"]["series_uid"],
             num_slices=report["series"]["num_slices"])
  for n in LABELS:
    f = report["findings"][n]
    row[f"prob_{n}"] = "" if f["probability"] is None else repr(f["probability"])
    row[f"positive_{n}"] = "" if f["positive"] is None else int(f["positive"])
  if report.get("volumes"):
    row["blood_ml"] = repr(report["volumes"]["blood"]["ml"])
  return row


def _write_summary(path: pathlib.Path, rows: Sequence[Mapping]) -> None:
  with atomic.open_write(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows(rows)


BATCH_KIND = "prediction-batch"


def predict_batch(bundle, folder, out, options: Options = Options()) -> list[dict]:
  """Every study in `folder` (see `study_entries`) into `out/<study>/`, and `out/summary.csv` after each.

  `out` is never replaced: it is created (or must be empty, or an earlier batch
  output of ich-jax's) and locked for this run; each study's folder in it is
  replaced atomically. A study that fails in this run loses the output an
  earlier run wrote for it (the summary says so), so no stale report stands
  beside an error.
  """
  out = atomic.check_output(out, BATCH_KIND, inputs=[folder, bundle.directory])
  entries = study_entries(folder)
  out.mkdir(parents=True, exist_ok=True)
  with lock.FolderLock(out, what="batch prediction output"):
    if not atomic.is_ours(out, BATCH_KIND):
      atomic.mark(out, BATCH_KIND)
    return _predict_entries(bundle, entries, out, options)


def _predict_entries(bundle, entries, out: pathlib.Path, options: Options) -> list[dict]:
  rows = []
  bar = None
  if options.progress:
    from tqdm import tqdm
    bar = tqdm(total=len(entries), desc="studies", unit="study", disable=None)
  single = dataclasses.replace(options, progress=False)
  for entry, name in zip(entries, output_names(entries)):
    start = time.perf_counter()
    try:
      report = predict_study(bundle, entry, out / name, single)
      rows.append(_summary_row(name, entry, out / name, report, seconds=time.perf_counter() - start))
    except Exception as e:  # one bad study must not stop the others; its error goes into the summary
      message = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
      if not isinstance(e, (atomic.NotOurs, lock.Locked)) and atomic.remove(out / name, "prediction"):
        message += f" (the output an earlier run wrote in {out / name} was removed)"
      rows.append(_summary_row(name, entry, "", error=message, seconds=time.perf_counter() - start))
      print(f"error: {name}: {message}", file=sys.stderr, flush=True)
    _write_summary(out / "summary.csv", rows)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ich_jax.predict", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="a model bundle (launch.py --mode export)")
  parser.add_argument("--input", required=True, help="a DICOM folder or NIfTI file (with --batch: a folder of them)")
  parser.add_argument("--output", required=True, help="the output folder (with --batch: one sub-folder per study)")
  parser.add_argument("--batch-size", type=int, default=Options.batch_size, help="slices per model call")
  parser.add_argument("--batch", action="store_true", help="--input holds one study per sub-folder or NIfTI file")
  parser.add_argument("--min-slices", type=int, default=Options.min_slices,
                      help="reject series with fewer slices (default 1: a single slice is a study)")
  parser.add_argument("--preferred-thickness", type=float, default=Options.preferred_thickness_mm,
                      help="among acceptable series, prefer this SliceThickness (mm)")
  parser.add_argument("--allow-uneven-spacing", action="store_true",
                      help="predict on series whose slice gaps vary (volumes use the median gap)")
  parser.add_argument("--allow-implausible-hu", "--allow-non-hu", dest="allow_non_hu", action="store_true",
                      help="predict on studies whose air and brain do not read where HU puts them (noted)")
  parser.add_argument("--assume-rescale-intercept", type=float, default=None, metavar="HU",
                      help="read DICOM slices without RescaleSlope/RescaleIntercept with slope 1 and this intercept "
                           "(e.g. -1024; noted) instead of refusing them")
  parser.add_argument("--strict", action="store_true",
                      help="an incomplete series (missing slices, short z coverage) is an error, not a report "
                           "marked incomplete")
  parser.add_argument("--max-study-gb", type=float, default=None, metavar="GB",
                      help="refuse, before reading its pixels, a study whose prediction would hold more memory than "
                           "this (default: half the machine's memory)")
  parser.add_argument("--overview-slices", type=int, default=OVERVIEW_SLICES,
                      help="slices in overview.png (0: no overview)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")
  parser.add_argument("--expect-sha256", metavar="SHA256",
                      help="refuse the bundle unless its identity is this (what `python -m ich_jax.bundle verify` "
                      "printed): pins the validated model")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f"--batch-size {args.batch_size}: need >= 1")
  if not 0 <= args.overview_slices <= OVERVIEW_SLICES:
    parser.error(f"--overview-slices {args.overview_slices}: need 0..{OVERVIEW_SLICES}")
  options = Options(batch_size=args.batch_size, min_slices=args.min_slices,
                    preferred_thickness_mm=args.preferred_thickness, allow_uneven_spacing=args.allow_uneven_spacing,
                    require_hu=not args.allow_non_hu, assume_intercept=args.assume_rescale_intercept,
                    strict=args.strict, max_study_gb=args.max_study_gb, overview_slices=args.overview_slices,
                    progress=not args.no_progress)
  from ich_jax import bundle as bundle_lib
  from ich_jax import xla_flags

  xla_flags.apply()
  try:
    # Refused before the bundle is compiled: an output that is the input, holds it, or is not ours.
    atomic.check_output(args.output, BATCH_KIND if args.batch else "prediction", inputs=[args.input, args.model])
    start = time.perf_counter()
    bundle = bundle_lib.load(args.model, expected_sha256=args.expect_sha256)
    bundle.warm_up(options.batch_size, gradcam_batch=OVERVIEW_SLICES if options.overview_slices else 0)
    print(f"Loaded {args.model} ({len(bundle.members)} member(s)) and compiled in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if args.batch:
      rows = predict_batch(bundle, args.input, args.output, options)
      failed = [r for r in rows if r["status"] == "error"]
      incomplete = sum(r["status"] == "incomplete" for r in rows)
      print(f"{len(rows) - len(failed)} of {len(rows)} studies predicted ({incomplete} incomplete); summary: "
            f"{pathlib.Path(args.output) / 'summary.csv'}", flush=True)
      return 1 if failed else 0
    report = predict_study(bundle, args.input, args.output, options)
  except (study_lib.StudyError, bundle_lib.BundleError, atomic.NotOurs, lock.Locked) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  f = report["findings"]
  positives = [SHORT[n] for n in LABELS if f[n]["positive"]]
  print(f"{report['study_id']}: ICH probability {f['any']['probability']:.3f} "
        f"({'POSITIVE' if f['any']['positive'] else 'negative'} at {report['threshold']})"
        + (f"; positive: {', '.join(positives)}" if positives else "")
        + ("; INCOMPLETE series: " + "; ".join(report["completeness"]["reasons"])
           if report["status"] == "incomplete" else "") + f". Report: {args.output}/report.md", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
