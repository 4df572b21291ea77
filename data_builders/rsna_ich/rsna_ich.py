"""TFDS builder `rsna_ich`: RSNA 2019 Intracranial Hemorrhage Detection (Kaggle), from the user's download.

Layout, labels and quirks: ../shared/reference/datasets.md (RSNA). The build

* reads `stage_2_train.csv` (`ID,Label`, six rows `ID_<hex>_<subtype>` per
  image): exact duplicate rows are dropped (counted in the report), a
  conflicting duplicate or an image with fewer than six subtypes is an error
  naming the ID;
* joins labels to `stage_2_train/<ID>.dcm` (or `stage_2_train_images/`) by
  file name and checks the file's SOPInstanceUID equals that ID; a label
  without its image, or an image without its labels, stops the build and
  names both;
* groups slices by SeriesInstanceUID and sorts them along the slice normal
  (ImagePositionPatient projected on cross(row, column) of
  ImageOrientationPatient), so file names and gantry tilt do not matter;
* converts to HU with `ich_jax.data.dicom.slice_hu`, the reader prediction
  uses: the 12-bit intercept quirk corrected (and counted in the report), a
  slice without RescaleSlope/RescaleIntercept skipped, never kept as stored
  values;
* skips a series whose slices differ in Rows/Columns (each file listed with
  the sizes): its slices are not one volume, and prediction refuses it too;
* skips, and lists in `build_report.json`, every file that cannot be read
  (the one corrupt image, ID_6431af929, among them);
* splits `stage_2_train` by patient (PatientID) into `train` / `validation`,
  never by slice; `stage_2_test` (or `stage_2_test_images/`) becomes `test`,
  unlabeled: its `labels` are NaN, so a loss or metric on it cannot pass
  silently.

Configs: `slices` (one example per slice, native 512), `slices256`, and
`scans` / `scans256` (one example per series, for the sequence models: seed
003 §2 feeds whole scans and their z-gaps to its GRUs).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import build_report, dicom_slices, ingest, resize, schemas
from ich_jax import LABELS
from ich_jax.data import dicom

TRAIN_DIRS = ("stage_2_train", "stage_2_train_images")
TEST_DIRS = ("stage_2_test", "stage_2_test_images")
LABELS_CSV = "stage_2_train.csv"
_ROW_ID = re.compile(r"(ID_[0-9A-Za-z]+)_(" + "|".join(LABELS) + r")")


@dataclasses.dataclass
class RsnaIchConfig(ingest.IngestConfig):
  # Fraction of stage_2_train patients held out as `validation` (by PatientID, fixed by a hash of the ID).
  validation_fraction: float = 0.1


# --- Labels ------------------------------------------------------------------------


def read_labels(path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """`stage_2_train.csv` → image ID → float32[6] in LABELS order, and counts for the report.

  Raises:
    ValueError naming the file, line, column and value: a malformed row; a
    conflicting duplicate (naming the ID, both lines and values); an image
    without all six subtype rows.
  """
  path = pathlib.Path(path)
  seen: dict[tuple[str, str], tuple[int, str]] = {}
  duplicates = 0
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = [c.strip() for c in next(reader, [])]
    if header != ["ID", "Label"]:
      raise ValueError(f"{path}: header must be 'ID,Label', got {','.join(header)!r}")
    for line, row in enumerate(reader, start=2):
      if not any(c.strip() for c in row):
        continue
      if len(row) != 2:
        raise ValueError(f"{path}:{line}: expected 2 columns ID,Label, got {row!r}")
      row_id, value = row[0].strip(), row[1].strip()
      m = _ROW_ID.fullmatch(row_id)
      if not m:
        raise ValueError(f"{path}:{line}: column ID: {row_id!r} is not ID_<hex>_<subtype> "
                         f"with subtype one of {', '.join(LABELS)}")
      if value not in ("0", "1"):
        raise ValueError(f"{path}:{line}: column Label: {value!r} for {row_id} is not 0 or 1")
      key = (m.group(1), m.group(2))
      if key in seen:
        first_line, first_value = seen[key]
        if first_value != value:
          raise ValueError(f"{path}: conflicting duplicate rows for {row_id}: Label {first_value} "
                           f"(line {first_line}) and {value} (line {line})")
        duplicates += 1
        continue
      seen[key] = (line, value)
  by_image: dict[str, dict[str, float]] = {}
  for (image, subtype), (_, value) in seen.items():
    by_image.setdefault(image, {})[subtype] = float(value)
  labels, inconsistent = {}, 0
  for image, values in by_image.items():
    missing = [s for s in LABELS if s not in values]
    if missing:
      raise ValueError(f"{path}: image {image} has no row for {', '.join(missing)} "
                       f"(expected one row {image}_<subtype> for each of {', '.join(LABELS)})")
    vector = np.asarray([values[s] for s in LABELS], np.float32)
    inconsistent += int(vector[0] != vector[1:].max())
    labels[image] = vector
  return labels, {"label rows: exact duplicates dropped": duplicates,
                  "images whose 'any' differs from max(subtypes) (kept as given)": inconsistent}


def list_images(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """`<ID>.dcm` files under `directory` (recursively) by ID; two files with one ID are an error."""
  out: dict[str, pathlib.Path] = {}
  for path in sorted(directory.rglob("*.dcm")):
    if path.stem in out:
      raise ValueError(f"image ID {path.stem} appears twice: {out[path.stem]} and {path}")
    out[path.stem] = path
  return out


def check_join(labels: dict, images: dict, csv_path, image_dir) -> None:
  """Every label has its image and every image its labels; else one error naming both sides."""
  no_image = sorted(set(labels) - set(images))
  no_labels = sorted(set(images) - set(labels))
  if not (no_image or no_labels):
    return
  lines = [f"{csv_path}: rows for {i} but no image {pathlib.Path(image_dir) / (i + '.dcm')}" for i in no_image[:10]]
  if len(no_image) > 10:
    lines.append(f"... and {len(no_image) - 10} more labelled IDs without an image")
  lines += [f"{images[i]}: no rows {i}_<subtype> in {csv_path}" for i in no_labels[:10]]
  if len(no_labels) > 10:
    lines.append(f"... and {len(no_labels) - 10} more images without labels")
  raise ValueError(f"RSNA labels and images do not match ({len(no_image)} labelled IDs without an image, "
                   f"{len(no_labels)} images without labels):\n  " + "\n  ".join(lines))


# --- Worker tasks ---------------------------------------------------------------------


@dataclasses.dataclass
class SeriesTask:
  config: RsnaIchConfig
  patient_id: str
  slices: list          # [(slice_index, SliceHeader, z, labels float32[6] or None)]
  thickness: float


def _series_result(task: SeriesTask) -> build_report.Result:
  cfg, out = task.config, build_report.Result()
  examples, quirk = [], 0
  for index, h, z, labels in task.slices:
    try:
      hu, rescale = dicom_slices.read_pixels(h.path, dicom.slice_hu)
    except dicom.DicomError as e:
      out.skipped.append((h.path, build_report.reason(e, h.path)))
      continue
    quirk += rescale.quirk_12bit
    fit = resize.Fit(hu.shape, cfg.resolution)
    examples.append((index, {
        "image": fit.image(hu),
        "labels": labels if labels is not None else np.full(len(LABELS), np.nan, np.float32),
        "patient_id": task.patient_id,
        "study_id": h.study_uid,
        "series_id": h.series_uid,
        "slice_index": np.int32(index),
        "z_position": np.float32(z),
        "pixel_spacing": fit.spacing(h.pixel_spacing),
        "slice_thickness": np.float32(task.thickness),
        "sop_uid": h.sop_uid,
        "dicom_window": np.asarray(h.window, np.float32),
    }))
  out.extra["12bit_corrected"] = quirk
  if not examples:
    return out
  series = examples[0][1]["series_id"]
  if cfg.level == "slice":
    out.examples = [(f"{series}_{i:04d}", ex) for i, ex in examples]
  else:
    exs = [ex for _, ex in examples]
    scan = schemas.to_scan_example(exs)
    scan["sop_uids"] = [ex["sop_uid"] for ex in exs]
    scan["slice_indices"] = np.asarray([i for i, _ in examples], np.int32)
    out.examples = [(series, scan)]
  return out


def _series_where(task: SeriesTask) -> str:
  return f"series {task.slices[0][1].series_uid} ({len(task.slices)} files)"


# --- The builder ----------------------------------------------------------------------


class RsnaIch(ingest.IngestBuilder):
  """RSNA 2019 head CT slices (or series) with six hemorrhage labels per slice."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": schemas.BYTES_RELEASE_NOTE}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the competition data of "RSNA Intracranial Hemorrhage Detection" from Kaggle
  (https://www.kaggle.com/c/rsna-intracranial-hemorrhage-detection/data; accept the rules first),
  unzip it and point manual_dir at the folder holding:
    stage_2_train.csv
    stage_2_train/ID_<hex>.dcm ...      (or stage_2_train_images/)
    stage_2_test/ID_<hex>.dcm ...       (optional; or stage_2_test_images/)
  """
  BUILDER_CONFIGS = ingest.standard_configs(RsnaIchConfig, "series")
  TASK_UNIT = "series"   # one worker task per series (the progress bar's unit)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.level == "slice":
      features = schemas.slice_features(cfg.resolution, mask=False, extra={
          "sop_uid": tfds.features.Text(),                                   # the Kaggle image ID, ID_<hex>
          "dicom_window": tfds.features.Tensor(shape=(2,), dtype=np.float32),  # first WindowCenter, WindowWidth
      })
    else:
      features = schemas.scan_features(cfg.resolution, mask=False, extra={
          "sop_uids": tfds.features.Sequence(tfds.features.Text()),
          "slice_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      })
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=features,
        homepage="https://www.kaggle.com/c/rsna-intracranial-hemorrhage-detection")

  def _shard_iterators_per_split(self, dl_manager):
    cfg, report = self.builder_config, self.report
    root = pathlib.Path(dl_manager.manual_dir)
    csv_path = ingest.require_file(root, [LABELS_CSV], "label CSV")
    train_dir = ingest.require_file(root, TRAIN_DIRS, "training image folder")
    test_dir = ingest.require_file(root, TEST_DIRS, "test image folder", required=False)

    labels, counts = read_labels(csv_path)
    for what, n in counts.items():
      report.count("labels", what, n)
    train_images = list_images(train_dir)
    check_join(labels, train_images, csv_path, train_dir)
    test_images = list_images(test_dir) if test_dir is not None else {}
    if test_dir is None:
      report.note(root, f"no {' or '.join(TEST_DIRS)} folder: no test split")

    series = self._scan(list(train_images.values()) + list(test_images.values()))
    train_series = {uid: s for uid, s in series.items() if pathlib.Path(s[0].path).stem in train_images}
    test_series = {uid: s for uid, s in series.items() if uid not in train_series}
    for uid, slices in test_series.items():
      if any(pathlib.Path(h.path).stem in train_images for h in slices):
        raise ValueError(f"series {uid} has files in both {train_dir} and {test_dir}")

    patient = {uid: self._patient(s) for uid, s in series.items()}
    patients = ingest.stable_order({patient[uid] for uid in train_series}, salt="rsna_ich")
    n_val = min(len(patients) - 1, max(1, round(cfg.validation_fraction * len(patients)))) \
        if cfg.validation_fraction > 0 and len(patients) > 1 else 0
    validation = set(patients[:n_val])
    by_split = {"train": [], "validation": [], "test": []}
    for uid in sorted(train_series):
      by_split["validation" if patient[uid] in validation else "train"].append(uid)
    by_split["test"] = sorted(test_series)

    out = {}
    for split, uids in by_split.items():
      tasks = [t for uid in uids if (t := self._task(series[uid], patient[uid], labels if split != "test" else None))]
      if not tasks:
        report.note(root, f"split {split}: no series")
        continue
      report.count(split, "series", len(tasks))
      weights = [len(t.slices) * cfg.resolution ** 2 * 2 for t in tasks]
      out[split] = self._shards(split, functools.partial(ingest.guarded, _series_result, _series_where),
                                tasks, weights)
    return out

  def _scan(self, paths) -> dict[str, list[dicom_slices.SliceHeader]]:
    """Headers of all files (in parallel), grouped by series; unreadable files reported."""
    chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    series: dict[str, list[dicom_slices.SliceHeader]] = {}
    for result in self._map(dicom_slices.read_slice_headers, chunks):
      self.report.add(result)
      for h in result.examples:
        stem = pathlib.Path(h.path).stem
        if h.sop_uid != stem:
          # The label join is by file name (datasets.md: SOPInstanceUID equals ID_<hex>).
          self.report.skip(h.path, f"SOPInstanceUID {h.sop_uid!r} differs from the file name's ID {stem!r}")
          continue
        series.setdefault(h.series_uid, []).append(h)
    return series

  def _patient(self, slices) -> str:
    ids = sorted({h.patient_id for h in slices})
    if not ids or ids == [""]:
      # datasets.md allows StudyInstanceUID as the split key; note it.
      self.report.note(slices[0].path, f"series {slices[0].series_uid}: no PatientID; split by StudyInstanceUID")
      return slices[0].study_uid
    if len(ids) > 1:
      self.report.note(slices[0].path, f"series {slices[0].series_uid} has PatientIDs {ids}; using {ids[0]}")
    return ids[0]

  def _task(self, slices, patient_id, labels) -> SeriesTask | None:
    ordered = dicom_slices.order_slices(slices)
    for path, reason in ordered.rejected:
      self.report.skip(path, reason)
    for path, message in ordered.notes:
      self.report.note(path, message)
    if not ordered.slices:
      return None
    mixed = dicom_slices.mixed_matrix(ordered.slices)
    for path, reason in mixed:
      self.report.skip(path, reason)
    if mixed:
      return None
    rows = [(i, h, float(z), None if labels is None else labels[pathlib.Path(h.path).stem])
            for i, (h, z) in enumerate(zip(ordered.slices, ordered.z))]
    # nan for a one-slice series without SliceThickness: no gap exists to stand in.
    return SeriesTask(self.builder_config, patient_id, rows, ordered.thickness)

  def _postprocess(self, split, result):
    self.report.count(split, "slices with the 12-bit intercept corrected", result.extra.get("12bit_corrected", 0))
