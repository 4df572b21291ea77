"""TFDS builder `cq500`: qure.ai's CQ500 head CTs with three radiologists' reads, and BHX boxes when present.

Layout, labels and quirks: ../shared/reference/datasets.md (CQ500, BHX). The build

* finds the patient folders (`CQ500CT<n> CQ500CT<n>/Unknown Study/<series>/*.dcm`)
  and matches them to `reads.csv` rows (`name` = `CQ500-CT-<n>`) by the number;
  a folder without a row, or a row without a folder, is listed in
  `build_report.json` (datasets.md: reported, never silently dropped);
* labels each scan with the majority of the three reads (2 of 3) for ICH
  ("any") and the five subtypes, and keeps the three reads (`reader_labels`);
  labels are per scan, so slices carry the scan's labels and
  `scan_level_label = 1`;
* picks one series per patient with `ich_jax.data.series_selection` (axial,
  non-contrast, soft tissue, thickness closest to `preferred_thickness_mm`);
  the choice and the reasons for it are recorded per study in the report's
  `selection` section (and in each scan example);
* sorts the chosen series along the slice normal and stores HU
  (`ich_jax.data.dicom.to_hu`, prediction's reader); a slice without
  RescaleSlope/RescaleIntercept is skipped and listed, never kept as stored
  values, and a series mixing matrix sizes is skipped (each file listed);
* joins BHX boxes (every `*.csv` with the BHX columns under `manual_dir/bhx/`)
  to slices by SOPInstanceUID: `boxes` [K, 4] (row0, col0, row1, col1 in stored
  pixels), `box_labels` [K] (subtype index 1–5 as in `mask`, 6 = Chronic, 0 =
  padding), `boxes_annotated` (the slice's series has BHX boxes). Boxes on
  series that were not chosen, or whose SOPInstanceUID is in no CQ500 file,
  are counted in the report.

One bad file is a skipped item, never a failed build. CQ500 is an external
test set (seed 003 and others report on it): one split, `test`.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import build_report, dicom_slices, ingest, resize, schemas
from ich_jax import LABELS
from ich_jax.data import dicom, series_selection

READS_CSV = "reads.csv"
# Labels are per scan (the readers read scans), carried by every slice: slice-level statistics do not exist
# (ich_jax.data.external.scan_level).
SCAN_LEVEL_LABELS = True
READERS = ("R1", "R2", "R3")
# reads.csv column suffix → ich_jax.LABELS entry.
READ_LABELS = {"ICH": "any", "EDH": "epidural", "IPH": "intraparenchymal", "IVH": "intraventricular",
               "SAH": "subarachnoid", "SDH": "subdural"}
# Folder names ("CQ500CT12 CQ500CT12", some mirrors "CQ500-CT-12") and reads.csv names ("CQ500-CT-12").
_NAME = re.compile(r"CQ500[-_ ]?CT[-_ ]?(\d+)(?!\d)", re.I)
BHX_COLUMNS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "data", "labelName", "labelType")
BHX_LABELS = {"Epidural": 1, "Intraparenchymal": 2, "Intraventricular": 3, "Subarachnoid": 4, "Subdural": 5,
              "Chronic": 6}


@dataclasses.dataclass
class Cq500Config(ingest.IngestConfig):
  # Series selection (ich_jax.data.series_selection.SelectionPolicy); 5 mm is what seed 003's
  # RSNA-trained models saw. 0.625 picks CQ500's thin series.
  preferred_thickness_mm: float = 5.0
  max_tilt_deg: float = 30.0
  min_slices: int = 5
  max_boxes: int = 16         # BHX boxes kept per slice (padded with label 0)

  def policy(self) -> series_selection.SelectionPolicy:
    return series_selection.SelectionPolicy(preferred_thickness_mm=self.preferred_thickness_mm,
                                            max_tilt_deg=self.max_tilt_deg, min_slices=self.min_slices)


def scan_number(name: str) -> int | None:
  """'CQ500-CT-12' or 'CQ500CT12 CQ500CT12' → 12; None if the name is not a CQ500 scan."""
  m = _NAME.match(name.strip())
  return int(m.group(1)) if m else None


@dataclasses.dataclass
class Reads:
  name: str
  category: str
  reads: np.ndarray     # float32 [3, 6], LABELS order
  line: int

  @property
  def labels(self) -> np.ndarray:
    """Majority of the three reads (datasets.md: 2 of 3)."""
    return (self.reads.sum(axis=0) >= 2).astype(np.float32)


def read_reads(path) -> dict[int, Reads]:
  """`reads.csv` → scan number → Reads. Errors name the file, line, column and value."""
  path = pathlib.Path(path)
  out: dict[int, Reads] = {}
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = [c.strip() for c in next(reader, [])]
    need = ["name", "Category"] + [f"{r}:{k}" for r in READERS for k in READ_LABELS]
    missing = [c for c in need if c not in header]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    col = {c: header.index(c) for c in need}
    for line, row in enumerate(reader, start=2):
      if not any(c.strip() for c in row):
        continue
      name = row[col["name"]].strip()
      number = scan_number(name)
      if number is None:
        raise ValueError(f"{path}:{line}: column name: {name!r} is not CQ500-CT-<n>")
      reads = np.zeros((len(READERS), len(LABELS)), np.float32)
      for r, reader_name in enumerate(READERS):
        for key, label in READ_LABELS.items():
          value = row[col[f"{reader_name}:{key}"]].strip()
          try:
            v = float(value)
          except ValueError:
            v = float("nan")
          if v not in (0.0, 1.0):
            raise ValueError(f"{path}:{line}: column {reader_name}:{key}: {value!r} for {name} is not 0 or 1")
          reads[r, LABELS.index(label)] = v
      if number in out:
        raise ValueError(f"{path}: {name} on line {line} and {out[number].name} on line {out[number].line} "
                         "are the same scan")
      out[number] = Reads(name, row[col["Category"]].strip(), reads, line)
  return out


def find_patients(root: pathlib.Path) -> dict[int, pathlib.Path]:
  """Scan number → its folder: the outermost folder under `root` whose name is a CQ500 scan."""
  out: dict[int, pathlib.Path] = {}

  def walk(d: pathlib.Path, depth: int):
    for p in sorted(d.iterdir()):
      if not p.is_dir():
        continue
      number = scan_number(p.name)
      if number is not None:
        if number in out:
          raise ValueError(f"scan {number} has two folders: {out[number]} and {p}")
        out[number] = p
      elif depth < 2 and p.name.lower() != "bhx":
        walk(p, depth + 1)   # an extra level from unzipping into a folder
  walk(root, 0)
  return out


def read_bhx(paths) -> tuple[dict[str, list[tuple[int, float, float, float, float]]], list[tuple[str, str]]]:
  """BHX CSVs → SOPInstanceUID → [(label code, x, y, width, height)] in pixels; malformed rows (where, why).

  `data` is a Python dict literal with single quotes (datasets.md), read with
  ast.literal_eval (no eval). Identical boxes from several files count once.
  """
  boxes: dict[str, list] = {}
  bad = []
  for path in paths:
    with open(path, newline="") as f:
      reader = csv.reader(f)
      header = [c.strip() for c in next(reader, [])]
      col = {c: header.index(c) for c in BHX_COLUMNS if c in header}
      for line, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
          continue
        where = f"{path}:{line}"
        try:
          sop, name, data = row[col["SOPInstanceUID"]].strip(), row[col["labelName"]].strip(), row[col["data"]]
          box = ast.literal_eval(data)
          x, y, w, h = (float(box[k]) for k in ("x", "y", "width", "height"))
        except (ValueError, SyntaxError, KeyError, TypeError, IndexError) as e:
          bad.append((where, f"malformed BHX row ({type(e).__name__}: {e}): {row!r}"))
          continue
        if name not in BHX_LABELS:
          bad.append((where, f"column labelName: {name!r} is not one of {', '.join(BHX_LABELS)}"))
          continue
        entry = (BHX_LABELS[name], x, y, w, h)
        if entry not in boxes.setdefault(sop, []):
          boxes[sop].append(entry)
  return boxes, bad


def bhx_files(root: pathlib.Path) -> list[pathlib.Path]:
  folder = root / "bhx"
  if not folder.is_dir():
    return []
  out = []
  for path in sorted(folder.rglob("*.csv")):
    with open(path, newline="") as f:
      header = [c.strip() for c in next(csv.reader(f), [])]
    if all(c in header for c in ("SOPInstanceUID", "data", "labelName")):
      out.append(path)
  return out


# --- Worker ---------------------------------------------------------------------------------


@dataclasses.dataclass
class PatientTask:
  config: Cq500Config
  reads: Reads
  folder: str


def _patient_result(task: PatientTask) -> build_report.Result:
  cfg, out = task.config, build_report.Result()
  folder = pathlib.Path(task.folder)
  with dicom_slices.quiet():
    by_series, unreadable = series_selection.headers_in_folder(folder)
  out.skipped += unreadable
  sop_series = {str(ds.get("SOPInstanceUID", "")): uid for uid, items in by_series.items() for _, ds in items}
  out.extra["sop_series"] = sop_series
  out.extra["name"] = task.reads.name
  selection = series_selection.select_series({u: [ds for _, ds in items] for u, items in by_series.items()},
                                             cfg.policy())
  out.extra["selection"] = selection.to_dict()
  if selection.series_uid is None:
    out.skipped.append((folder, f"no series selected: {selection.reason}"))
    return out
  headers = []
  for path, ds in by_series[selection.series_uid]:
    try:
      headers.append(dicom_slices.slice_header(path, ds))
    except dicom.DicomError as e:
      out.skipped.append((path, build_report.reason(e, path)))
  if not headers:
    return out
  ordered = dicom_slices.order_slices(headers)
  out.skipped += ordered.rejected
  out.notes += ordered.notes
  mixed = dicom_slices.mixed_matrix(ordered.slices)
  if mixed:
    out.skipped += mixed
    return out
  description = next(c["description"] for c in selection.to_dict()["candidates"]
                     if c["series_uid"] == selection.series_uid)
  examples, shapes = [], {}
  for index, (h, z) in enumerate(zip(ordered.slices, ordered.z)):
    try:
      # dicom.to_hu refuses a slice without RescaleSlope/RescaleIntercept: its stored values are not HU.
      hu = dicom_slices.read_pixels(h.path)
    except dicom.DicomError as e:
      out.skipped.append((h.path, build_report.reason(e, h.path)))
      continue
    fit = resize.Fit(hu.shape, cfg.resolution)
    shapes[h.sop_uid] = hu.shape
    examples.append((index, {
        "image": fit.image(hu), "labels": task.reads.labels,
        "patient_id": task.reads.name, "study_id": h.study_uid, "series_id": h.series_uid,
        "slice_index": np.int32(index), "z_position": np.float32(z),
        "pixel_spacing": fit.spacing(h.pixel_spacing), "slice_thickness": np.float32(ordered.thickness),
        "scan_level_label": np.uint8(1), "sop_uid": h.sop_uid, "category": task.reads.category,
        "reader_labels": task.reads.reads, "series_description": description,
        "dicom_window": np.asarray(h.window, np.float32),
    }))
  out.extra["shapes"] = shapes
  if not examples:
    return out
  if cfg.level == "slice":
    out.examples = [(f"{ex['series_id']}_{i:04d}", ex) for i, ex in examples]
  else:
    exs = [ex for _, ex in examples]
    scan = schemas.to_scan_example(exs, per_slice_labels=False,
                                   keys=("category", "reader_labels", "series_description"))
    scan["sop_uids"] = [ex["sop_uid"] for ex in exs]
    scan["slice_indices"] = np.asarray([i for i, _ in examples], np.int32)
    scan["selection_reason"] = selection.reason
    out.examples = [(exs[0]["series_id"], scan)]
  return out


def _patient_where(task: PatientTask) -> str:
  return task.folder


# --- The builder ---------------------------------------------------------------------------


class Cq500(ingest.IngestBuilder):
  """CQ500 head CT scans: one selected series per patient, majority-of-three scan labels, BHX boxes."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": schemas.BYTES_RELEASE_NOTE,
                   "1.2.0": "slices keep their DICOM header window (dicom_window), as rsna_ich's do."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download CQ500 from qure.ai (http://headctstudy.qure.ai/dataset; the zips CQ500-CT-<n>.zip and
  reads.csv), unzip every zip into one folder and point manual_dir at it:
    reads.csv
    CQ500CT0 CQ500CT0/Unknown Study/<series description>/CT000000.dcm ...
    ...
  Optionally add the BHX boxes (PhysioNet "Brain Hemorrhage Extended", the CSV files) under:
    bhx/*.csv
  """
  BUILDER_CONFIGS = ingest.standard_configs(Cq500Config, "scan")

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    k = cfg.max_boxes
    common_extra = {
        "category": tfds.features.Text(),                                                # reads.csv Category
        "reader_labels": tfds.features.Tensor(shape=(len(READERS), len(LABELS)), dtype=np.float32),
        "series_description": tfds.features.Text(),
    }
    if cfg.level == "slice":
      features = schemas.slice_features(cfg.resolution, mask=False, extra={
          **common_extra,
          "scan_level_label": tfds.features.Scalar(dtype=np.uint8),   # 1: labels are the scan's, not this slice's
          "sop_uid": tfds.features.Text(),
          "boxes": tfds.features.Tensor(shape=(k, 4), dtype=np.float32),
          "box_labels": tfds.features.Tensor(shape=(k,), dtype=np.int32),
          "boxes_annotated": tfds.features.Scalar(dtype=np.uint8),
          # First WindowCenter, WindowWidth (nan if absent): seed 003's public-code input (intensity dicom_window).
          "dicom_window": tfds.features.Tensor(shape=(2,), dtype=np.float32),
      })
    else:
      features = schemas.scan_features(cfg.resolution, mask=False, per_slice_labels=False, extra={
          **common_extra,
          "sop_uids": tfds.features.Sequence(tfds.features.Text()),
          "slice_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "selection_reason": tfds.features.Text(),
          "boxes": tfds.features.Tensor(shape=(None, k, 4), dtype=np.float32),
          "box_labels": tfds.features.Tensor(shape=(None, k), dtype=np.int32),
          "boxes_annotated": tfds.features.Scalar(dtype=np.uint8),
      })
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features,
                                 homepage="http://headctstudy.qure.ai/dataset")

  def _shard_iterators_per_split(self, dl_manager):
    cfg, report = self.builder_config, self.report
    root = pathlib.Path(dl_manager.manual_dir)
    reads_path = ingest.require_file(root, [READS_CSV], "reads CSV")
    reads = read_reads(reads_path)
    folders = find_patients(root)
    for number in sorted(set(folders) - set(reads)):
      report.skip(folders[number], f"no row CQ500-CT-{number} in {reads_path}: folder not built")
    for number in sorted(set(reads) - set(folders)):
      report.skip(f"{reads_path}:{reads[number].line}", f"{reads[number].name}: no folder CQ500CT{number} ... "
                                                        f"under {root}")
    files = bhx_files(root)
    self._bhx, bad = read_bhx(files)
    for where, why in bad:
      report.skip(where, why)
    if not files:
      report.note(root, "no BHX CSV under bhx/: no boxes")
    self._bhx_seen: set[str] = set()
    self._all_sops: dict[str, str] = {}
    report.sections["selection"] = {}
    tasks = [PatientTask(cfg, reads[n], str(folders[n])) for n in sorted(set(folders) & set(reads))]
    if not tasks:
      raise ValueError(f"{root}: no CQ500 folder matches a row of {reads_path}")
    report.count("test", "scans", len(tasks))
    # Weight: the file count (headers and pixels of the chosen series dominate); about 300 files per patient.
    weights = [300 * cfg.resolution ** 2 * 2] * len(tasks)
    return {"test": self._shards("test", functools.partial(ingest.guarded, _patient_result, _patient_where),
                                 tasks, weights)}

  def _postprocess(self, split, result):
    del split
    if "selection" in result.extra:
      self.report.sections["selection"][result.extra["name"]] = result.extra["selection"]
    self._all_sops.update(result.extra.get("sop_series", {}))
    shapes = result.extra.get("shapes", {})
    for _, ex in result.examples:
      if "volume" in ex:
        per_slice = [self._boxes(sop, shapes[sop]) for sop in ex["sop_uids"]]
        ex["boxes"] = np.stack([b for b, _ in per_slice])
        ex["box_labels"] = np.stack([lab for _, lab in per_slice])
        ex["boxes_annotated"] = np.uint8(any(sop in self._bhx for sop in ex["sop_uids"]))
      else:
        ex["boxes"], ex["box_labels"] = self._boxes(ex["sop_uid"], shapes[ex["sop_uid"]])
    if result.examples and "volume" not in result.examples[0][1]:
      annotated = np.uint8(any(ex["sop_uid"] in self._bhx for _, ex in result.examples))
      for _, ex in result.examples:
        ex["boxes_annotated"] = annotated

  def _boxes(self, sop: str, shape) -> tuple[np.ndarray, np.ndarray]:
    k = self.builder_config.max_boxes
    boxes, labels = np.zeros((k, 4), np.float32), np.zeros((k,), np.int32)
    entries = self._bhx.get(sop, [])
    if entries:
      self._bhx_seen.add(sop)
    if len(entries) > k:
      self.report.note(sop, f"{len(entries)} BHX boxes, max_boxes {k}: the first {k} kept")
    fit = resize.Fit(tuple(shape), self.builder_config.resolution)
    for i, (code, x, y, w, h) in enumerate(entries[:k]):
      r0, c0 = fit.point(y, x)
      r1, c1 = fit.point(y + h, x + w)
      boxes[i], labels[i] = (r0, c0, r1, c1), code
    return boxes, labels

  def _finish_report(self):
    elsewhere = sorted(s for s in self._bhx if s not in self._bhx_seen and s in self._all_sops)
    unknown = sorted(s for s in self._bhx if s not in self._all_sops)
    self.report.sections["bhx"] = {
        "sop_uids_with_boxes": len(self._bhx), "joined_to_built_slices": len(self._bhx_seen),
        "on_series_not_chosen": len(elsewhere), "sop_uid_in_no_cq500_file": len(unknown),
        "sop_uids_in_no_cq500_file": unknown[:100]}
