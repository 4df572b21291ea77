"""TFDS builder `physionet_ct_ich`: PhysioNet CT-ICH 1.3.1 (Hssayeni et al.; seed 002), from the user's download.

Layout, labels and quirks: ../shared/reference/datasets.md (PhysioNet CT-ICH).
75 NIfTI head CTs (`ct_scans/NNN.nii`, NNN = 049…130 without 059–065) with
hemorrhage masks (`masks/NNN.nii`, voxel > 0 is blood) and per-slice subtype
labels (`hemorrhage_diagnosis_raw_ct.csv`, SliceNumber 1-based along the
stored last axis). The build

* reorients every volume to the DICOM display convention
  (`ich_jax.data.nifti.load_axial`) and its mask with the *image's* affine, and
  maps each output slice back to its stored SliceNumber, so labels, masks and
  images stay together whatever axis order or flips the NIfTI has;
* stores the mask as the slice's subtype index (the `mask` convention: 0 or
  1–5): the CSV gives subtypes per slice only, so a slice with one subtype is
  exact, and a slice with several takes the highest index
  (`mask_subtype_exact = 0`, docs/datasets.md, "Label map overlaps");
* writes splits `fold0` … `fold4`: patients dealt to folds after a seeded
  shuffle, ICH-positive and negative patients separately so every fold has
  both (seed 002 §6: subject-based 5-fold cross-validation, one fold for
  testing, one for validation, three for training). `fold_splits(k)` names a
  round: test fold k, validation fold k+1 (our choice; the paper does not say
  which), train the other three;
* measures blood volumes (`blood_volumes`): per slice and per study, in total
  and per subtype, from the mask's voxels at the NIfTI's native resolution
  (before the resize to `resolution`) times the voxel volume (slice gap × row
  × column spacing). A stored pixel is blood if any native pixel in it is, so
  counting stored pixels would inflate every bleed, most of all the small ones
  that seed 000's Model 5 (≤ 5 mL, §2.2.1) and seed 001's size bins select. A
  slice's blood goes to the subtype its `mask` gives it (the one the CSV
  names, or the highest of several), so the subtype volumes sum to the total;
  blood on a slice the CSV calls blood-free is left out, as from the mask;
* keeps the chronic-bleed subject unless `exclude_chronic` (seed 002 §3 excluded
  "one of cases [that] had a chronic ICH"; it is found in
  Patient_demographics.csv, or named by `chronic_patients`).

Images are stored in HU; the radiologists annotated them in the brain window
40/120 and bone window 700/3200 (seed 002 §3), which a data config
chooses at load time.

A label that cannot be joined to a volume, or a volume slice without its
label row, stops the build naming both; an unreadable volume or a missing mask
is skipped and listed in `build_report.json`.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import build_report, ingest, resize, schemas
from ich_jax import LABELS
from ich_jax.data import nifti

CT_DIR, MASK_DIR = "ct_scans", "masks"
DIAGNOSIS_CSV = "hemorrhage_diagnosis_raw_ct.csv"
DEMOGRAPHICS_CSV = "Patient_demographics.csv"   # some copies spell it in lower case (datasets.md)
# datasets.md: 049…130 with 059–065 absent (not released).
UNRELEASED = frozenset(range(59, 66))
# CSV column of each LABELS subtype.
SUBTYPE_COLUMNS = {"epidural": "Epidural", "intraparenchymal": "Intraparenchymal",
                   "intraventricular": "Intraventricular", "subarachnoid": "Subarachnoid", "subdural": "Subdural"}
# The file's columns, in its order (datasets.md).
CSV_COLUMNS = ("PatientNumber", "SliceNumber", "Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural",
               "Subdural", "No_Hemorrhage", "Fracture_Yes_No")


@dataclasses.dataclass
class PhysionetCtIchConfig(ingest.IngestConfig):
  folds: int = 5                    # seed 002 §6: 5-fold subject-based cross-validation
  fold_seed: int = 0
  exclude_chronic: bool = False     # True: leave out the chronic-ICH subject(s), as seed 002 §3 did
  chronic_patients: tuple[int, ...] = ()   # empty: those whose Patient_demographics.csv row says "chronic"


def fold_splits(fold: int, folds: int = 5) -> dict[str, str]:
  """Split names for one cross-validation round (seed 002 §6): test = fold k, validation = k+1, train = the rest."""
  if not 0 <= fold < folds:
    raise ValueError(f"fold must be in [0, {folds}), got {fold}")
  val = (fold + 1) % folds
  return {"train": "+".join(f"fold{k}" for k in range(folds) if k not in (fold, val)),
          "validation": f"fold{val}", "test": f"fold{fold}"}


def assign_folds(positive: dict[int, bool], folds: int, seed: int) -> dict[int, int]:
  """Patient → fold: positives then negatives, each shuffled (seeded), dealt in turn; deterministic."""
  rng = np.random.default_rng(seed)
  out, k = {}, 0
  for group in (sorted(p for p, pos in positive.items() if pos), sorted(p for p, pos in positive.items() if not pos)):
    for i in rng.permutation(len(group)):
      out[group[i]] = k % folds
      k += 1
  return out


# --- CSVs -----------------------------------------------------------------------------


@dataclasses.dataclass
class SliceRow:
  labels: np.ndarray    # float32 [6], LABELS order
  fracture: int
  line: int


def _flag(path, line, column, value) -> int:
  v = value.strip()
  try:
    f = float(v)
  except ValueError:
    f = float("nan")
  if f not in (0.0, 1.0):
    raise ValueError(f"{path}:{line}: column {column}: {value!r} is not 0 or 1")
  return int(f)


def read_diagnosis(path) -> tuple[dict[int, dict[int, SliceRow]], list[tuple[str, str]], int]:
  """`hemorrhage_diagnosis_raw_ct.csv` → patient → SliceNumber (1-based) → SliceRow; notes; exact duplicates.

  "any" is 1 where a subtype column is 1 or No_Hemorrhage is 0 (blood of an
  unnamed subtype still counts); disagreements between the two are noted.
  """
  path = pathlib.Path(path)
  out: dict[int, dict[int, SliceRow]] = {}
  notes, duplicates = [], 0
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = [c.strip() for c in next(reader, [])]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
    col = {c: header.index(c) for c in CSV_COLUMNS}
    for line, row in enumerate(reader, start=2):
      if not any(c.strip() for c in row):
        continue   # the real file ends with blank rows
      row = row + [""] * (len(header) - len(row))
      try:
        patient, number = int(float(row[col["PatientNumber"]])), int(float(row[col["SliceNumber"]]))
      except ValueError:
        raise ValueError(f"{path}:{line}: PatientNumber/SliceNumber {row[col['PatientNumber']]!r}/"
                         f"{row[col['SliceNumber']]!r} are not integers") from None
      if number < 1:
        raise ValueError(f"{path}:{line}: column SliceNumber: {number} (SliceNumber is 1-based)")
      sub = [_flag(path, line, SUBTYPE_COLUMNS[s], row[col[SUBTYPE_COLUMNS[s]]]) for s in LABELS[1:]]
      none = _flag(path, line, "No_Hemorrhage", row[col["No_Hemorrhage"]])
      fracture = _flag(path, line, "Fracture_Yes_No", row[col["Fracture_Yes_No"]])
      labels = np.asarray([float(max(sub) or not none), *sub], np.float32)
      if bool(max(sub)) == bool(none):
        notes.append((f"{path}:{line}", f"patient {patient} slice {number}: No_Hemorrhage={none} but subtypes "
                                        f"{dict(zip(LABELS[1:], sub))}; any={int(labels[0])}"))
      rows = out.setdefault(patient, {})
      if number in rows:
        first = rows[number]
        if np.array_equal(first.labels, labels) and first.fracture == fracture:
          duplicates += 1
          continue
        raise ValueError(f"{path}: conflicting rows for patient {patient} slice {number}: line {first.line} "
                         f"and line {line}")
      rows[number] = SliceRow(labels, fracture, line)
  return out, notes, duplicates


def read_demographics(path) -> dict[int, str]:
  """Patient → its row's text. Read tolerantly (datasets.md: a multi-row header; metadata, not labels)."""
  out = {}
  with open(path, newline="", encoding="utf-8", errors="replace") as f:
    for row in csv.reader(f):
      if row and re.fullmatch(r"\s*\d+(\.0+)?\s*", row[0]):
        out[int(float(row[0]))] = " ".join(c.strip() for c in row[1:] if c.strip())
  return out


# --- Worker ----------------------------------------------------------------------------


@dataclasses.dataclass
class PatientTask:
  config: PhysionetCtIchConfig
  number: int
  ct: str
  mask: str
  rows: dict             # SliceNumber -> SliceRow
  fold: int
  chronic: bool


def _patient_result(task: PatientTask) -> build_report.Result:
  cfg, out = task.config, build_report.Result()
  try:
    ct = nifti.load_axial(task.ct)
  except nifti.NiftiError as e:
    out.skipped.append((task.ct, build_report.reason(e, task.ct)))
    return out
  try:
    # The mask is drawn on the image's voxel grid: reorient it with the image's affine.
    mask = nifti.load_axial(task.mask, affine=ct.affine, shape=ct.stored_shape)
  except nifti.NiftiError as e:
    out.skipped.append((task.mask, build_report.reason(e, task.mask)))
    return out
  if not np.allclose(mask.affine, _own_affine(task.mask), atol=1e-3):
    out.notes.append((task.mask, "affine differs from the image's; the mask follows the image's voxel grid"))
  blood_full = np.rint(mask.data) > 0
  fit = resize.Fit(ct.data.shape[1:], cfg.resolution)
  image = fit.image(ct.data)
  blood = fit.mask(blood_full)
  spacing = fit.spacing(ct.spacing[1:])
  pid = f"{task.number:03d}"
  rows = [task.rows[int(ct.source_slice[s]) + 1] for s in range(image.shape[0])]
  # The subtype index each slice's blood gets in `mask` (0: the CSV names none).
  mask_subtype = np.asarray([int((np.flatnonzero(r.labels[1:]) + 1).max(initial=0)) for r in rows], np.int64)
  slice_ml = blood_volumes(blood_full, mask_subtype, ct.spacing)
  study_ml = slice_ml.sum(axis=0)
  examples = []
  for s in range(image.shape[0]):
    number = int(ct.source_slice[s]) + 1
    row = rows[s]
    subtypes = np.flatnonzero(row.labels[1:]) + 1
    m = np.zeros(blood[s].shape, np.uint8)
    exact = len(subtypes) <= 1
    if subtypes.size:
      m[blood[s]] = mask_subtype[s]
    elif blood_full[s].any():
      out.notes.append((task.mask, f"slice {number}: {int(blood_full[s].sum())} mask voxels but the CSV names no "
                                   "subtype; mask left empty (labels come from the CSV)"))
    if row.labels[0] and not blood_full[s].any():
      out.notes.append((task.mask, f"slice {number}: labelled hemorrhage, empty mask"))
    examples.append({
        "image": image[s], "labels": row.labels, "mask": m,
        "patient_id": pid, "study_id": pid, "series_id": pid,
        "slice_index": np.int32(s), "z_position": np.float32(ct.z_positions[s]),
        "pixel_spacing": spacing, "slice_thickness": np.float32(ct.spacing[0]),
        "slice_number": np.int32(number), "fold": np.int32(task.fold), "fracture": np.uint8(row.fracture),
        "mask_subtype_exact": np.uint8(exact), "chronic": np.uint8(task.chronic),
        "slice_blood_ml": np.float32(slice_ml[s].sum()), "slice_subtype_ml": slice_ml[s].astype(np.float32),
        "study_blood_ml": np.float32(study_ml.sum()), "study_subtype_ml": study_ml.astype(np.float32),
    })
  if cfg.level == "slice":
    out.examples = [(f"{pid}_{s:04d}", ex) for s, ex in enumerate(examples)]
  else:
    scan = schemas.to_scan_example(examples, keys=("fold", "chronic", "study_blood_ml", "study_subtype_ml"),
                                   stacked=("slice_blood_ml", "slice_subtype_ml"))
    scan["slice_numbers"] = np.asarray([ex["slice_number"] for ex in examples], np.int32)
    scan["mask_subtype_exact"] = np.asarray([ex["mask_subtype_exact"] for ex in examples], np.uint8)
    out.examples = [(pid, scan)]
  return out


def blood_volumes(blood: np.ndarray, mask_subtype: np.ndarray, spacing) -> np.ndarray:
  """mL of blood per slice and subtype, float64 [S, 5] (LABELS[1:] order), at the mask's own resolution.

  blood: bool [S, H, W], the mask as the NIfTI stores it (reoriented, not
  resized); mask_subtype: int [S], the subtype index 1–5 the slice's blood
  gets in `mask` (0: none, its blood is not counted); spacing: (slice gap,
  row, column) mm. A voxel is slice gap × row × column mm³ (PhysioNet's 5 mm
  slices are contiguous: gap = thickness).
  """
  blood, mask_subtype = np.asarray(blood, bool), np.asarray(mask_subtype, np.int64)
  if blood.ndim != 3 or mask_subtype.shape != blood.shape[:1]:
    raise ValueError(f"blood_volumes: blood {blood.shape} and mask_subtype {mask_subtype.shape} do not match")
  voxel_ml = float(np.prod(np.asarray(spacing, np.float64))) / 1000.0
  voxels = blood.reshape(len(blood), -1).sum(axis=1)
  out = np.zeros((len(blood), len(LABELS) - 1), np.float64)
  labelled = np.flatnonzero(mask_subtype > 0)
  out[labelled, mask_subtype[labelled] - 1] = voxels[labelled] * voxel_ml
  return out


def _own_affine(path) -> np.ndarray:
  import nibabel as nib
  return np.asarray(nib.load(str(path)).affine)


def _patient_where(task: PatientTask) -> str:
  return task.ct


# --- The builder -------------------------------------------------------------------------


class PhysionetCtIch(ingest.IngestBuilder):
  """PhysioNet CT-ICH head CT slices (or scans) with hemorrhage masks and per-slice subtypes."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": schemas.BYTES_RELEASE_NOTE,
                   "1.2.0": "Blood volumes from the masks at native resolution: study_blood_ml, study_subtype_ml, "
                            "slice_blood_ml, slice_subtype_ml (mL; subtypes in LABELS[1:] order)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download "Computed Tomography Images for Intracranial Hemorrhage Detection and Segmentation" 1.3.1
  from PhysioNet (https://physionet.org/content/ct-ich/1.3.1/; credentialed access, sign the data use
  agreement), unzip it and point manual_dir at the folder holding:
    ct_scans/049.nii ... 130.nii       (75 volumes; 059-065 were never released)
    masks/049.nii ... 130.nii
    hemorrhage_diagnosis_raw_ct.csv
    Patient_demographics.csv           (optional; needed for exclude_chronic)
  """
  BUILDER_CONFIGS = ingest.standard_configs(PhysionetCtIchConfig, "scan")

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.level == "slice":
      features = schemas.slice_features(cfg.resolution, mask=True, extra={
          "slice_number": tfds.features.Scalar(dtype=np.int32),     # the CSV's 1-based SliceNumber (stored order)
          "fold": tfds.features.Scalar(dtype=np.int32),
          "fracture": tfds.features.Scalar(dtype=np.uint8),
          "mask_subtype_exact": tfds.features.Scalar(dtype=np.uint8),   # 0: several subtypes share the mask
          "chronic": tfds.features.Scalar(dtype=np.uint8),
          # Blood volumes (mL, blood_volumes): the slice's and its study's, total and per subtype.
          "slice_blood_ml": tfds.features.Scalar(dtype=np.float32),
          "slice_subtype_ml": tfds.features.Tensor(shape=(len(LABELS) - 1,), dtype=np.float32),
          "study_blood_ml": tfds.features.Scalar(dtype=np.float32),
          "study_subtype_ml": tfds.features.Tensor(shape=(len(LABELS) - 1,), dtype=np.float32),
      })
    else:
      features = schemas.scan_features(cfg.resolution, mask=True, extra={
          "slice_numbers": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "mask_subtype_exact": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
          "fold": tfds.features.Scalar(dtype=np.int32),
          "chronic": tfds.features.Scalar(dtype=np.uint8),
          "slice_blood_ml": tfds.features.Tensor(shape=(None,), dtype=np.float32),
          "slice_subtype_ml": tfds.features.Tensor(shape=(None, len(LABELS) - 1), dtype=np.float32),
          "study_blood_ml": tfds.features.Scalar(dtype=np.float32),
          "study_subtype_ml": tfds.features.Tensor(shape=(len(LABELS) - 1,), dtype=np.float32),
      })
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features,
                                 homepage="https://physionet.org/content/ct-ich/1.3.1/")

  def _shard_iterators_per_split(self, dl_manager):
    import nibabel as nib

    cfg, report = self.builder_config, self.report
    root = pathlib.Path(dl_manager.manual_dir)
    csv_path = ingest.require_file(root, [DIAGNOSIS_CSV], "slice label CSV")
    ct_dir = ingest.require_file(root, [CT_DIR], "CT folder")
    mask_dir = ingest.require_file(root, [MASK_DIR], "mask folder")
    rows, notes, duplicates = read_diagnosis(csv_path)
    for where, message in notes:
      report.note(where, message)
    report.count("labels", "label rows: exact duplicates dropped", duplicates)

    cts, masks = _volumes(ct_dir), _volumes(mask_dir)
    problems, depth = [], {}
    for number in sorted(set(rows) - set(cts)):
      if number in UNRELEASED:
        report.note(csv_path, f"rows for patient {number}, not released (datasets.md: 059-065 absent)")
      else:
        problems.append(f"{csv_path}: rows for patient {number} but no {ct_dir / f'{number:03d}.nii'}")
    for number in sorted(set(cts) - set(rows)):
      problems.append(f"{cts[number]}: no rows for PatientNumber {number} in {csv_path}")
    for number in sorted(set(cts) & set(rows)):
      try:
        shape = nib.load(str(cts[number])).shape
      except Exception as e:  # a corrupt header: skip the patient, do not guess
        report.skip(cts[number], f"cannot read NIfTI header: {type(e).__name__}: {e}")
        continue
      if len(shape) != 3:
        report.skip(cts[number], f"expected a 3-D volume, got shape {shape}")
        continue
      depth[number] = shape[2]
      have = set(rows[number])
      want = set(range(1, shape[2] + 1))
      if have != want:
        lacking, extra = sorted(want - have), sorted(have - want)
        problems.append(f"{cts[number]} has {shape[2]} slices; {csv_path} rows for patient {number}: "
                        + (f"no row for SliceNumber {_ranges(lacking)}" if lacking else "")
                        + ("; " if lacking and extra else "")
                        + (f"rows for SliceNumber {_ranges(extra)} beyond the volume" if extra else ""))
    if problems:
      raise ValueError(f"PhysioNet CT-ICH labels and volumes do not match ({len(problems)}):\n  "
                       + "\n  ".join(problems))

    chronic = self._chronic(root, set(depth))
    patients = []
    for number in sorted(depth):
      if number not in masks:
        report.skip(cts[number], f"no mask {mask_dir / f'{number:03d}.nii'}: a volume without its mask is not "
                                 "given an empty one")
        continue
      if cfg.exclude_chronic and number in chronic:
        report.note(cts[number], "chronic ICH: excluded (exclude_chronic)")
        continue
      patients.append(number)
    positive = {n: any(r.labels[0] for r in rows[n].values()) for n in patients}
    fold = assign_folds(positive, cfg.folds, cfg.fold_seed)
    report.sections["folds"] = {f"fold{k}": [f"{n:03d}" for n in patients if fold[n] == k] for k in range(cfg.folds)}

    out = {}
    for k in range(cfg.folds):
      tasks = [PatientTask(cfg, n, str(cts[n]), str(masks[n]), rows[n], k, n in chronic)
               for n in patients if fold[n] == k]
      if not tasks:
        report.note(root, f"fold{k}: no patients")
        continue
      report.count(f"fold{k}", "patients", len(tasks))
      weights = [depth[t.number] * cfg.resolution ** 2 * 3 for t in tasks]
      out[f"fold{k}"] = self._shards(f"fold{k}", functools.partial(ingest.guarded, _patient_result, _patient_where),
                                     tasks, weights)
    return out

  def _chronic(self, root: pathlib.Path, present: set[int]) -> set[int]:
    cfg = self.builder_config
    if cfg.chronic_patients:
      return set(cfg.chronic_patients)
    path = next((p for p in root.iterdir() if p.name.lower() == DEMOGRAPHICS_CSV.lower()), None)
    if path is None:
      if cfg.exclude_chronic:
        raise FileNotFoundError(f"{root}: exclude_chronic needs {DEMOGRAPHICS_CSV} (to find the chronic-ICH "
                                "subject) or chronic_patients=(N,) in the config")
      return set()
    found = {n for n, text in read_demographics(path).items() if "chronic" in text.lower()}
    self.report.sections["chronic_patients"] = sorted(found)
    if cfg.exclude_chronic and not found & present:
      raise ValueError(f"{path}: no row of a present patient mentions 'chronic'; exclude_chronic needs "
                       "chronic_patients=(N,) in the config")
    return found


def _volumes(directory: pathlib.Path) -> dict[int, pathlib.Path]:
  out = {}
  for path in sorted(directory.iterdir()):
    m = re.fullmatch(r"(\d+)\.nii(\.gz)?", path.name)
    if m:
      number = int(m.group(1))
      if number in out:
        raise ValueError(f"patient {number} has two volumes: {out[number]} and {path}")
      out[number] = path
  return out


def _ranges(numbers) -> str:
  """[1, 2, 3, 7] → "1-3, 7"."""
  out, start = [], None
  for i, n in enumerate(numbers):
    if start is None:
      start = n
    if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
      out.append(f"{start}" if start == n else f"{start}-{n}")
      start = None
  return ", ".join(out)

