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

The `*_stage1` configs (`slices_stage1`, `slices256_stage1`, `scans_stage1`,
`scans256_stage1`) make `test` seed 003's own test set instead: Table 3 is
scored on the RSNA stage-1 ("batch-1") test set, whose labels stage 2 released
inside `stage_2_train.csv` (seed 003 §2 "Dataset"). Its image IDs come from
`stage_1_sample_submission.csv` in manual_dir (rows `ID_<hex>_<subtype>`), or
else from the file names in a `stage_1_test_images/` (`stage_1_test/`) folder;
`test` then holds exactly those images, labelled. The split stays by patient:
a patient with stage-1 test images has every other image of theirs (stage-1
training images, in stage 2's training set) left out of `train` and
`validation`, counted in the build report; the paper trained on the whole
stage-1 training set. Without either source the build falls back to holding
out patients, in an order fixed by a hash of the PatientID, until
`stage1_fallback_fraction` of the images (the stage-1 test's share) is held
out: a test set of the same size, not the same images; the report says which
source was used. `stage_2_test` is not read by these configs.
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
# Where the stage-1 test image IDs are read from, first found first: Kaggle's stage-1 sample submission (six
# rows ID_<hex>_<subtype> per image), or the stage-1 download's test image folder (file names ID_<hex>.dcm).
STAGE1_SUBMISSION = "stage_1_sample_submission.csv"
STAGE1_TEST_DIRS = ("stage_1_test_images", "stage_1_test")
TEST_SETS = ("stage_2_test", "stage_1_test")
_ROW_ID = re.compile(r"(ID_[0-9A-Za-z]+)_(" + "|".join(LABELS) + r")")


@dataclasses.dataclass
class RsnaIchConfig(ingest.IngestConfig):
  # Fraction of stage_2_train patients held out as `validation` (by PatientID, fixed by a hash of the ID).
  validation_fraction: float = 0.1
  # What `test` is: "stage_2_test", Kaggle's unlabelled stage-2 test images; "stage_1_test", the stage-1 test
  # images held out of stage_2_train by patient, labelled (seed 003 Table 3's test set; module docstring).
  test_set: str = "stage_2_test"
  # "stage_1_test" without the stage-1 IDs in manual_dir: the share of the images held out by patient instead.
  # Seed 003 §2 "Dataset": batch-1 has 674,258 training and 78,545 test slices (78,545 / 752,803 = 10.4 %).
  stage1_fallback_fraction: float = 78545 / (674258 + 78545)

  def __post_init__(self):
    super().__post_init__()
    if self.test_set not in TEST_SETS:
      raise ValueError(f"{self.name}: test_set must be one of {TEST_SETS}, got {self.test_set!r}")


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
  for line, image, subtype, value in _id_label_rows(path):
    row_id = f"{image}_{subtype}"
    if value not in ("0", "1"):
      raise ValueError(f"{path}:{line}: column Label: {value!r} for {row_id} is not 0 or 1")
    key = (image, subtype)
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


def read_stage1_ids(path) -> set[str]:
  """Image IDs of `stage_1_sample_submission.csv` (`ID,Label`, six rows `ID_<hex>_<subtype>` per image).

  Raises:
    ValueError naming the file, line and value of a malformed row (`_id_label_rows`).
  """
  return {image for _, image, _, _ in _id_label_rows(pathlib.Path(path))}


def _id_label_rows(path: pathlib.Path):
  """(line, ID_<hex>, subtype, Label) per row of a Kaggle `ID,Label` CSV, blank rows skipped.

  Raises:
    ValueError naming the file, line and value: a header other than
    `ID,Label`, a row without two columns, an ID not ID_<hex>_<subtype>.
  """
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
      row_id = row[0].strip()
      m = _ROW_ID.fullmatch(row_id)
      if not m:
        raise ValueError(f"{path}:{line}: column ID: {row_id!r} is not ID_<hex>_<subtype> "
                         f"with subtype one of {', '.join(LABELS)}")
      yield line, m.group(1), m.group(2), row[1].strip()


def stage1_test_ids(root: pathlib.Path) -> tuple[set[str] | None, str]:
  """The stage-1 test image IDs from manual_dir (`STAGE1_SUBMISSION`, else `STAGE1_TEST_DIRS`) and where they
  came from; (None, "") when neither is there."""
  submission = ingest.require_file(root, [STAGE1_SUBMISSION], "stage-1 sample submission", required=False)
  if submission is not None:
    return read_stage1_ids(submission), str(submission)
  folder = ingest.require_file(root, STAGE1_TEST_DIRS, "stage-1 test image folder", required=False)
  if folder is not None:
    return set(list_images(folder)), str(folder)
  return None, ""


def stage1_split(series_images: dict[str, list[str]], patient: dict[str, str], held: set[str] | None,
                 fallback_fraction: float) -> tuple[dict[str, list[str]], set[str], set[str]]:
  """The stage-1 test set within stage_2_train, by patient.

  Args:
    series_images: series UID → its image IDs.
    patient: series UID → patient.
    held: the stage-1 test image IDs; None: the fallback, patients in a hashed
      order until `fallback_fraction` of the images is held out.

  Returns:
    (series UID → its held-out image IDs, the image IDs left out of every
    split because their patient has held-out images, the held-out patients).
  """
  if held is None:
    sizes: dict[str, int] = {}
    for uid, ids in series_images.items():
      sizes[patient[uid]] = sizes.get(patient[uid], 0) + len(ids)
    target, n, chosen = fallback_fraction * sum(sizes.values()), 0, set()
    for p in ingest.stable_order(sizes, salt="rsna_ich:stage_1_test"):
      if n >= target:
        break
      chosen.add(p)
      n += sizes[p]
    return {uid: list(ids) for uid, ids in series_images.items() if patient[uid] in chosen}, set(), chosen
  test = {uid: [i for i in ids if i in held] for uid, ids in series_images.items()}
  test = {uid: ids for uid, ids in test.items() if ids}
  patients = {patient[uid] for uid in test}
  left_out = {i for uid, ids in series_images.items() if patient[uid] in patients for i in ids if i not in held}
  return test, left_out, patients


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
  The *_stage1 configs (seed 003's test set) also read, if present:
    stage_1_sample_submission.csv       (from the stage-1 data; or a stage_1_test_images/ folder)
  """
  BUILDER_CONFIGS = ingest.standard_configs(RsnaIchConfig, "series") + [
      dataclasses.replace(c, name=f"{c.name}_stage1", test_set="stage_1_test",
                          description=f"{c.description} test: the stage-1 test images, labelled (seed 003 Table 3).")
      for c in ingest.standard_configs(RsnaIchConfig, "series")]
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
    stage1 = cfg.test_set == "stage_1_test"
    if stage1 and test_dir is not None:
      report.note(test_dir, f"config {cfg.name}: test is the stage-1 test set; {test_dir.name} is not read")
      test_dir = None

    labels, counts = read_labels(csv_path)
    for what, n in counts.items():
      report.count("labels", what, n)
    train_images = list_images(train_dir)
    check_join(labels, train_images, csv_path, train_dir)
    held, source = None, ""
    if stage1:
      held, source = stage1_test_ids(root)
      self._check_stage1_ids(held, source, train_images, train_dir)
    test_images = list_images(test_dir) if test_dir is not None else {}
    if test_dir is None and not stage1:
      report.note(root, f"no {' or '.join(TEST_DIRS)} folder: no test split")

    series = self._scan(list(train_images.values()) + list(test_images.values()))
    train_series = {uid: s for uid, s in series.items() if pathlib.Path(s[0].path).stem in train_images}
    test_series = {uid: s for uid, s in series.items() if uid not in train_series}
    for uid, slices in test_series.items():
      if any(pathlib.Path(h.path).stem in train_images for h in slices):
        raise ValueError(f"series {uid} has files in both {train_dir} and {test_dir}")

    patient = {uid: self._patient(s) for uid, s in series.items()}
    held_out: set[str] = set()
    if stage1:
      test_images_of, held_out = self._stage1_test(train_series, patient, held, source)
      # Exactly the held-out images: a series mixing them with others (none in the real data) keeps only them.
      test_series = {uid: [h for h in train_series[uid] if pathlib.Path(h.path).stem in ids]
                     for uid, ids in ((u, set(i)) for u, i in test_images_of.items())}
      train_series = {uid: s for uid, s in train_series.items() if patient[uid] not in held_out}
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
      split_labels = labels if split != "test" or stage1 else None
      tasks = [t for uid in uids if (t := self._task(test_series[uid] if split == "test" else series[uid],
                                                    patient[uid], split_labels))]
      if not tasks:
        report.note(root, f"split {split}: no series")
        continue
      report.count(split, "series", len(tasks))
      weights = [len(t.slices) * cfg.resolution ** 2 * 2 for t in tasks]
      out[split] = self._shards(split, functools.partial(ingest.guarded, _series_result, _series_where),
                                tasks, weights)
    return out

  def _check_stage1_ids(self, held, source, train_images, train_dir) -> None:
    """Every stage-1 test ID is a stage_2_train image (stage 2 released their labels there); else an error."""
    if held is None:
      self.report.note(self.builder_config.name, (
          f"no {STAGE1_SUBMISSION} or {' / '.join(STAGE1_TEST_DIRS)} in manual_dir: test holds out patients (hashed "
          f"order) up to {self.builder_config.stage1_fallback_fraction:.2%} of the images, the size of the stage-1 "
          "test set but not its images; results are not comparable with seed 003's Table 3"))
      return
    missing = sorted(held - set(train_images))
    if missing:
      raise ValueError(f"{source}: {len(missing)} of its {len(held)} stage-1 test images are not in {train_dir} "
                       f"(stage 2 moved them there), e.g. {', '.join(missing[:5])}: is {train_dir} complete, and is "
                       f"{source} the stage-1 test list?")

  def _stage1_test(self, train_series, patient, held, source) -> tuple[dict[str, list[str]], set[str]]:
    """`stage1_split` on the readable stage_2_train series, with its counts in the report."""
    series_images = {uid: [pathlib.Path(h.path).stem for h in s] for uid, s in train_series.items()}
    test, left_out, patients = stage1_split(series_images, patient, held, self.builder_config.stage1_fallback_fraction)
    report = self.report
    report.note(self.builder_config.name, f"test: the stage-1 test images from {source}" if held is not None else
                "test: the fallback hold-out (no stage-1 test IDs in manual_dir)")
    report.count("test", "stage-1 test images held out", sum(len(ids) for ids in test.values()))
    report.count("test", "stage-1 test patients", len(patients))
    # Stage 2's training set holds stage-1 training images of stage-1 test patients: in no split, so that no
    # patient is both trained on and tested.
    report.count("test", "images left out of train and validation: their patient has stage-1 test images",
                 len(left_out))
    report.count("test", "patients with both stage-1 training and test images",
                 len({patient[uid] for uid, ids in series_images.items() if set(ids) & left_out}))
    return test, patients

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
