"""Small copies of the real datasets, written in their exact on-disk layouts (datasets.md), phantom pixels.

Each `write_*` lays out a manual_dir under `root` and returns what a correct
build must produce (per image: HU at the written resolution, labels, z), so a
test compares the built records with the truth rather than with the code
under test. Layouts, file and column names are the real ones; matrices are
64×64 (the real 512 scales down through a test config's `resolution`).
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
import shutil

import numpy as np
import pydicom
import pydicom.data
import pydicom.uid

from ich_jax import LABELS
from data_builders.dicom_slices import quiet
from ich_jax.data import dicom, phantom

MATRIX = 64
PIXEL_MM = 3.5   # a 64 matrix at 3.5 mm covers a 22 cm field, as 512 × 0.43 mm does


def study(seed: int, slices: int = 6, bleed: bool = True, thickness: float = 5.0) -> phantom.Phantom:
  spec = phantom.PhantomSpec(matrix=MATRIX, pixel_spacing_mm=(PIXEL_MM, PIXEL_MM), slice_thickness_mm=(thickness,),
                             max_slices=slices, p_hemorrhage=1.0 if bleed else 0.0, p_extra_bleed=0.5)
  return phantom.make_phantom(seed, spec)


def rsna_id(rng: np.random.Generator) -> str:
  return f"ID_{int(rng.integers(16**9)):09x}"


# --- RSNA 2019 --------------------------------------------------------------------------

# The tags an RSNA file carries (its headers were stripped to these; no SliceThickness, no description).
RSNA_TAGS = frozenset({
    "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyID",
    "ImagePositionPatient", "ImageOrientationPatient", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "PixelData"})
CORRUPT_ID = "ID_6431af929"   # datasets.md: the one corrupt RSNA image


def strip_to_rsna(path, **overrides) -> None:
  with quiet():
    ds = pydicom.dcmread(path)
    for elem in list(ds):
      if elem.keyword not in RSNA_TAGS:
        del ds[elem.tag]
    for k, v in overrides.items():
      setattr(ds, k, v)
    ds.save_as(path)


@dataclasses.dataclass
class Image:
  path: pathlib.Path
  patient: str
  study: str
  series: str
  hu: np.ndarray          # int16 [H, W], the true HU
  labels: np.ndarray | None
  z: float
  window: tuple[float, float] = (40.0, 80.0)


@dataclasses.dataclass
class RsnaFixture:
  root: pathlib.Path
  images: dict[str, Image]          # image ID -> truth (the bad files included)
  bad: dict[str, str]               # file name -> what is wrong with it
  series: dict[str, list[str]]      # series UID -> image IDs in true z order
  quirk_series: str
  tilt_series: str
  window_series: str
  real_series: str
  test_series: str
  duplicate_rows: int
  duplicate_position: str          # the second image at one position


def write_rsna(root, seed: int = 0) -> RsnaFixture:
  """stage_2_train.csv, stage_2_train/ID_<hex>.dcm, stage_2_test/ID_<hex>.dcm, as Kaggle ships them."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  train, test = root / "stage_2_train", root / "stage_2_test"
  images, series_ids = {}, {}
  new = lambda: rsna_id(rng)  # noqa: E731

  def write(ph_hu, z, out_dir, *, patient, study_uid, labels=None, transfer_syntax=pydicom.uid.ExplicitVRLittleEndian,
            quirk=False, tilt_deg=0.0, window=None):
    series_uid = new()
    sops = [new() for _ in range(len(ph_hu))]
    hu = np.asarray(ph_hu)
    kwargs = dict(patient_id=patient, study_uid=study_uid, series_uid=series_uid, sop_uids=sops,
                  file_names=lambda i, uid: f"{uid}.dcm", transfer_syntax=transfer_syntax,
                  z_positions=z, origin=(-110.0, -100.0, 0.0))
    truth = hu.astype(np.int16)
    if quirk:
      # The 12-bit quirk (datasets.md): stored = (HU + 1000 - 1000) mod 4096 with BitsStored 12,
      # unsigned, and an intercept > -100 that the reader must replace by -1000.
      truth = np.clip(hu, -1000, 3095).astype(np.int16)
      stored = np.mod(truth.astype(np.int32), 4096)
      written = stored + 1.0
      kwargs.update(bits_stored=12, pixel_representation=0, rescale_intercept=1.0)
    else:
      written = hu
    if tilt_deg:
      t = np.radians(tilt_deg)
      kwargs["orientation"] = (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t)))
    if window is not None:
      kwargs["extra_tags"] = {"WindowCenter": window[0], "WindowWidth": window[1]}
    with quiet():
      paths = dicom.write_series(written, (5.0, 0.45, 0.45), out_dir, **kwargs)
    zs = np.asarray(z, float)
    for i, (path, sop) in enumerate(zip(paths, sops)):
      overrides = {}
      if tilt_deg:
        # Gantry tilt: the table steps along patient z while the slice plane is tilted, so
        # positions do not follow the normal; the reader must project them on it.
        overrides["ImagePositionPatient"] = [-110.0, -100.0, float(zs[i])]
      strip_to_rsna(path, **overrides)
      normal = np.cross(*np.reshape(kwargs.get("orientation", (1, 0, 0, 0, 1, 0)), (2, 3)))
      true_z = float(np.dot([-110.0, -100.0, zs[i]], normal)) if tilt_deg else float(zs[i])
      w = (float(np.atleast_1d(window[0])[0]), float(np.atleast_1d(window[1])[0])) if window else (40.0, 80.0)
      images[sop] = Image(path, patient, study_uid, series_uid, truth[i],
                          None if labels is None else labels[i].astype(np.float32), true_z, w)
    series_ids[series_uid] = list(sops)
    return series_uid

  # Patient A: one study; the corrupt image is one of its slices.
  a = study(1, slices=6)
  series_a = write(a.hu, 10.0 + 5.0 * np.arange(6), train, patient="ID_pat00a", study_uid=new(),
                   labels=a.slice_labels)
  # Patient B: two studies; the second RLE-compressed.
  b1, b2 = study(2, slices=5), study(3, slices=5, bleed=False)
  series_b1 = write(b1.hu, 5.0 * np.arange(5), train, patient="ID_pat00b", study_uid=new(), labels=b1.slice_labels)
  write(b2.hu, -20.0 + 5.0 * np.arange(5), train, patient="ID_pat00b", study_uid=new(), labels=b2.slice_labels,
        transfer_syntax=pydicom.uid.RLELossless)
  # Patient C: the 12-bit quirk.
  c = study(4, slices=5)
  quirk = write(c.hu, 2.5 * np.arange(5), train, patient="ID_pat00c", study_uid=new(), labels=c.slice_labels,
                quirk=True)
  # Patient D: gantry tilt (positions along the table) and multi-valued window tags.
  d = study(5, slices=6)
  tilt = write(d.hu, 3.0 + 4.5 * np.arange(6), train, patient="ID_pat00d", study_uid=new(), labels=d.slice_labels,
               tilt_deg=-15.0, window=(["36", "36"], ["80", "80"]))
  # Patient E: a normal study, JPEG 2000 lossless.
  e = study(6, slices=5)
  write(e.hu, 5.0 * np.arange(5), train, patient="ID_pat00e", study_uid=new(), labels=e.slice_labels,
        transfer_syntax=pydicom.uid.JPEG2000Lossless)
  # Patient F: pydicom's real head CT slice (JPEG 2000, 512×512, multi-valued window 40\40\40),
  # renamed the RSNA way.
  real_sop, real_series = new(), new()
  src = pydicom.dcmread(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
  ref = pydicom.dcmread(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
  from pydicom.pixels import apply_modality_lut
  real_hu = apply_modality_lut(ref.pixel_array, ref)
  with quiet():
    src.SOPInstanceUID = real_sop
    src.file_meta.MediaStorageSOPInstanceUID = real_sop
    src.SeriesInstanceUID, src.StudyInstanceUID, src.PatientID = real_series, new(), "ID_pat00f"
    real_path = train / f"{real_sop}.dcm"
    src.save_as(real_path)
  strip_to_rsna(real_path)
  o = np.asarray([float(v) for v in ref.ImageOrientationPatient])
  images[real_sop] = Image(real_path, "ID_pat00f", str(src.StudyInstanceUID), real_series, real_hu,
                           np.asarray([1, 0, 1, 0, 0, 0], np.float32),
                           float(np.dot([float(v) for v in ref.ImagePositionPatient], np.cross(o[:3], o[3:]))),
                           (40.0, 100.0))
  series_ids[real_series] = [real_sop]

  # The bad files, each with its label rows (a bad file is a skip, not a missing label).
  bad = {}
  victim = series_ids[series_a][2]
  corrupt = train / f"{CORRUPT_ID}.dcm"
  with quiet():
    ds = pydicom.dcmread(images[victim].path)
    ds.SOPInstanceUID = CORRUPT_ID
    ds.file_meta.MediaStorageSOPInstanceUID = CORRUPT_ID
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]   # truncated pixel data, as the real one
    ds.save_as(corrupt)
  images[victim].path.unlink()
  img = images.pop(victim)
  img.path = corrupt
  images[CORRUPT_ID] = img
  series_ids[series_a][2] = CORRUPT_ID
  bad[corrupt.name] = "truncated PixelData"
  garbage_id = "ID_0badf11e0"
  (train / f"{garbage_id}.dcm").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
  images[garbage_id] = Image(train / f"{garbage_id}.dcm", "?", "?", "?", None, np.zeros(6, np.float32), 0.0)
  bad[f"{garbage_id}.dcm"] = "not DICOM"
  # A JPEG-LS file whose codestream no installed decoder reads.
  jls_victim = series_ids[series_a][4]
  with quiet():
    ds = pydicom.dcmread(images[jls_victim].path)
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData[:512]])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.save_as(images[jls_victim].path, enforce_file_format=True)
  bad[images[jls_victim].path.name] = "JPEG-LS"

  # A second file at the position of slice 3 of B's first series (kept, ordered by SOPInstanceUID),
  # and a slice without ImagePositionPatient (cannot be placed: skipped).
  src_id = series_ids[series_b1][3]
  extra = {}
  for what in ("duplicate", "no_position", "no_intercept"):
    sop = new()
    with quiet():
      ds = pydicom.dcmread(images[src_id].path)
      ds.SOPInstanceUID = sop
      ds.file_meta.MediaStorageSOPInstanceUID = sop
      if what == "no_position":
        del ds.ImagePositionPatient
      if what == "no_intercept":   # placed past the series' end; without the LUT its values are not HU
        del ds.RescaleIntercept
        ds.ImagePositionPatient = [-110.0, -100.0, 40.0]
      ds.save_as(train / f"{sop}.dcm")
    src = images[src_id]
    images[sop] = Image(train / f"{sop}.dcm", src.patient, src.study, src.series, src.hu, src.labels, src.z)
    extra[what] = sop
  bad[f"{extra['no_position']}.dcm"] = "missing ImagePositionPatient"
  bad[f"{extra['no_intercept']}.dcm"] = "missing RescaleIntercept"
  pair = sorted([src_id, extra["duplicate"]])
  series_ids[series_b1][3:4] = pair
  series_ids[series_b1] += [extra["no_position"], extra["no_intercept"]]

  # Test split: no labels.
  t = study(7, slices=4)
  test_series = write(t.hu, 5.0 * np.arange(4), test, patient="ID_pat0t1", study_uid=new())

  # stage_2_train.csv: six rows per labelled image, shuffled, some rows duplicated exactly.
  rows = [(f"{i}_{s}", int(img.labels[k])) for i, img in images.items() if img.labels is not None
          for k, s in enumerate(LABELS)]
  order = rng.permutation(len(rows))
  rows = [rows[k] for k in order]
  dup = [rows[k] for k in rng.choice(len(rows), 7, replace=False)]
  rows = rows + dup
  with open(root / "stage_2_train.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["ID", "Label"])
    w.writerows(rows)
  return RsnaFixture(root, images, bad, series_ids, quirk, tilt, tilt, real_series, test_series, len(dup),
                     extra["duplicate"])


# --- PhysioNet CT-ICH --------------------------------------------------------------------

PHYSIONET_SUBTYPE_COLUMNS = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")


@dataclasses.dataclass
class PhysionetPatient:
  number: int
  hu: np.ndarray            # int16 [S, H, W] canonical: S ascending (superior), rows posterior, cols patient-left
  blood: np.ndarray         # bool [S, H, W]
  labels: np.ndarray        # float32 [S, 6]
  axcodes: tuple[str, str, str]
  stored_to_canonical: np.ndarray   # stored slice k (0-based) -> canonical slice index


def write_physionet_volume(path, canonical: np.ndarray, spacing, codes, dtype=np.int16, slope=None, inter=None):
  """Writes `canonical` [S, H, W] (S superior-ascending, rows posterior, cols patient-left) as NIfTI with axes `codes`.

  Returns the map stored slice k -> canonical slice index.
  """
  import nibabel as nib
  from nibabel import orientations as ornt

  s, h, w = canonical.shape
  # Canonical array axes (x: L, y: P, z: S) and its RAS affine.
  arr = np.transpose(canonical, (2, 1, 0))
  affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
  affine[:3, 3] = [100.0, 120.0, -30.0]
  transform = ornt.ornt_transform(ornt.axcodes2ornt(("L", "P", "S")), ornt.axcodes2ornt(codes))
  stored = ornt.apply_orientation(arr, transform)
  stored_affine = affine @ ornt.inv_ornt_aff(transform, arr.shape)
  index = ornt.apply_orientation(np.broadcast_to(np.arange(s)[None, None, :], arr.shape), transform)
  img = nib.Nifti1Image(stored.astype(dtype), stored_affine)
  if slope is not None:
    img.header.set_slope_inter(slope, inter)
  img.header.set_xyzt_units("mm")
  nib.save(img, str(path))
  # The stored last axis is the canonical slice axis (axial codes only), maybe reversed.
  return np.asarray(index[0, 0, :] if index.ndim == 3 else index, np.int64)


@dataclasses.dataclass
class PhysionetFixture:
  root: pathlib.Path
  patients: dict[int, PhysionetPatient]
  chronic: int


def write_physionet(root, numbers=(49, 50, 51, 52, 53, 66), chronic: int = 52, seed: int = 10,
                    demographics_name: str = "Patient_demographics.csv") -> PhysionetFixture:
  """ct_scans/NNN.nii, masks/NNN.nii, hemorrhage_diagnosis_raw_ct.csv, Patient_demographics.csv (PhysioNet 1.3.1)."""
  root = pathlib.Path(root)
  (root / "ct_scans").mkdir(parents=True)
  (root / "masks").mkdir()
  # The orientations a NIfTI converter may leave: radiological, neurological, slices descending, in-plane swapped.
  codes_cycle = [("L", "P", "S"), ("R", "A", "S"), ("L", "A", "I"), ("P", "R", "S"), ("R", "P", "I"), ("L", "P", "S")]
  patients, rows = {}, []
  for k, number in enumerate(numbers):
    ph = study(seed + k, slices=6, bleed=k % 3 != 2)
    blood = ph.masks.any(axis=0)
    codes = codes_cycle[k % len(codes_cycle)]
    spacing = (5.0, PIXEL_MM, PIXEL_MM)
    if k == 1:   # float32 data with scl_slope/inter, as some converters write
      stored_map = write_physionet_volume(root / "ct_scans" / f"{number:03d}.nii", (ph.hu + 1024).astype(np.float32),
                                          spacing, codes, dtype=np.uint16, slope=1.0, inter=-1024.0)
    else:
      stored_map = write_physionet_volume(root / "ct_scans" / f"{number:03d}.nii", ph.hu, spacing, codes)
    write_physionet_volume(root / "masks" / f"{number:03d}.nii", blood.astype(np.uint8) * 255, spacing, codes,
                           dtype=np.uint8)
    patients[number] = PhysionetPatient(number, ph.hu, blood, ph.slice_labels.astype(np.float32), codes, stored_map)
    # One row per stored slice, SliceNumber 1-based in the stored (file) order.
    for stored_k, canon in enumerate(stored_map):
      lab = ph.slice_labels[canon]
      sub = dict(zip(("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"), lab[1:]))
      rows.append([number, stored_k + 1, int(sub["intraventricular"]), int(sub["intraparenchymal"]),
                   int(sub["subarachnoid"]), int(sub["epidural"]), int(sub["subdural"]), int(1 - lab[0]), 0])
  with open(root / "hemorrhage_diagnosis_raw_ct.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["PatientNumber", "SliceNumber", *PHYSIONET_SUBTYPE_COLUMNS, "No_Hemorrhage", "Fracture_Yes_No"])
    w.writerows(rows)
    w.writerow(["", "", "", "", "", "", "", "", ""])   # the real file ends with blank rows
  # Patient_demographics.csv: a two-row merged header, as exported from a spreadsheet.
  with open(root / demographics_name, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["Patient Number", "Age\n(years)", "Gender", "Hemorrhage type based on the radiologists diagnosis ",
                "", "", "", "", "Fracture (yes 1/no 0)", "Condition on file", "Note1"])
    w.writerow(["", "", "", "IVH", "IPH", "SAH", "EDH", "SDH", "", "", ""])
    for number in numbers:
      note = "Chronic ICH" if number == chronic else ""
      w.writerow([number, 30, "Male", "", "1", "", "", "", "0", "", note])
  return PhysionetFixture(root, patients, chronic)


# --- CQ500 (+ BHX) --------------------------------------------------------------------------

READERS = ("R1", "R2", "R3")
READ_FIELDS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
               "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")
# reads.csv field -> ich_jax.LABELS index
READ_TO_LABEL = {"ICH": 0, "EDH": 1, "IPH": 2, "IVH": 3, "SAH": 4, "SDH": 5}


@dataclasses.dataclass
class Cq500Fixture:
  root: pathlib.Path
  selected: dict[str, str]             # scan name -> SeriesInstanceUID that must be chosen
  selected_description: dict[str, str]
  hu: dict[str, np.ndarray]            # scan name -> the chosen series' HU [S, H, W], z ascending
  z: dict[str, np.ndarray]
  sops: dict[str, list[str]]
  labels: dict[str, np.ndarray]        # majority labels [6]
  reads: dict[str, np.ndarray]         # [3, 6]
  unmatched_folder: str
  unmatched_row: str
  bad_file: pathlib.Path
  boxes: dict[str, list[tuple[str, float, float, float, float]]]   # SOP -> (labelName, x, y, w, h)


def _series(ph_hu, out, *, desc, thickness=5.0, kernel="STANDARD", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), contrast=None, patient="", study_uid="", number=1, z=None):
  extra = {"ContrastBolusAgent": contrast} if contrast else {}
  series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(out), desc, str(number)])
  n = len(ph_hu)
  paths = dicom.write_series(
      ph_hu, (thickness, 0.45, 0.45), out, z_positions=z if z is not None else thickness * np.arange(n),
      orientation=orientation, patient_id=patient, study_uid=study_uid, series_uid=series_uid,
      series_number=number, series_description=desc, image_type=image_type, kernel=kernel,
      file_names=lambda i, uid: f"CT{i:06d}.dcm", extra_tags=extra)
  return series_uid, paths


def write_cq500(root, seed: int = 20, with_bhx: bool = True) -> Cq500Fixture:
  """`CQ500CT<n> CQ500CT<n>/Unknown Study/<series>/CT*.dcm`, reads.csv, and a BHX CSV (qure.ai / PhysioNet layouts)."""
  root = pathlib.Path(root)
  selected, selected_desc, hus, zs, sops, boxes = {}, {}, {}, {}, {}, {}
  reads_rows, labels, reads = [], {}, {}
  bad_file = None

  def reads_for(n, votes):
    """votes: field -> (r1, r2, r3)."""
    row = [f"CQ500-CT-{n}", "B1"]
    arr = np.zeros((3, 6), np.float32)
    for r, reader in enumerate(READERS):
      for field in READ_FIELDS:
        v = votes.get(field, (0, 0, 0))[r]
        row.append(v)
        if field in READ_TO_LABEL:
          arr[r, READ_TO_LABEL[field]] = v
    reads_rows.append(row)
    name = f"CQ500-CT-{n}"
    reads[name] = arr
    labels[name] = (arr.sum(0) >= 2).astype(np.float32)

  # CQ500CT0: thin plain, 5 mm plain, bone, post contrast, a coronal reformat and a localizer.
  folder = root / "CQ500CT0 CQ500CT0" / "Unknown Study"
  study_uid = pydicom.uid.generate_uid(entropy_srcs=["cq0"])
  thick = study(seed, slices=6)
  thin = study(seed, slices=12, thickness=2.5)
  same = dict(patient="CQ500-CT-0", study_uid=study_uid)
  _series(thin.hu, folder / "CT PLAIN THIN", desc="CT PLAIN THIN", thickness=2.5, number=2, **same)
  # Written top slice first: file names say nothing about the order.
  z5 = 40.0 - 5.0 * np.arange(6)
  uid5, paths5 = _series(thick.hu, folder / "CT 5mm", desc="CT 5mm", number=3, z=z5, **same)
  _series(thick.hu, folder / "CT BONE", desc="CT BONE", kernel="BONE", number=4, **same)
  _series(thick.hu, folder / "CT POST CONTRAST", desc="CT POST CONTRAST", contrast="OMNIPAQUE", number=5, **same)
  _series(thick.hu[:, :, :].transpose(1, 0, 2)[:6], folder / "CT CORONAL", desc="CT Brain Coronal", number=6,
          orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), **same)
  _series(thick.hu[:1], folder / "CT Localizer", desc="Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
          number=1, **same)
  bad_file = folder / "CT POST CONTRAST" / "CT000099.dcm"
  bad_file.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage")
  selected["CQ500-CT-0"], selected_desc["CQ500-CT-0"] = uid5, "CT 5mm"
  order = np.argsort(z5)
  hus["CQ500-CT-0"], zs["CQ500-CT-0"] = thick.hu[order], z5[order]
  with quiet():
    sops["CQ500-CT-0"] = [str(pydicom.dcmread(paths5[i], stop_before_pixels=True).SOPInstanceUID) for i in order]
  reads_for(0, {"ICH": (1, 1, 0), "IPH": (1, 1, 1), "SDH": (1, 0, 0), "SAH": (0, 1, 1), "Fracture": (1, 1, 1)})

  # CQ500CT1: only a thin plain series and its bone twin (soft kernel code H31s vs H70h), gantry-tilted.
  folder = root / "CQ500CT1 CQ500CT1" / "Unknown Study"
  study_uid = pydicom.uid.generate_uid(entropy_srcs=["cq1"])
  thin1 = study(seed + 1, slices=8, thickness=2.5, bleed=False)
  tilt = (1.0, 0.0, 0.0, 0.0, float(np.cos(np.radians(12))), float(np.sin(np.radians(12))))
  uid1, paths1 = _series(thin1.hu, folder / "CT Thin Plain", desc="CT Thin Plain", thickness=2.5, kernel="H31s",
                         orientation=tilt, patient="CQ500-CT-1", study_uid=study_uid, number=2)
  _series(thin1.hu, folder / "CT Thin Plain Bone", desc="CT Thin Plain", thickness=2.5, kernel="H70h",
          orientation=tilt, patient="CQ500-CT-1", study_uid=study_uid, number=3)
  selected["CQ500-CT-1"], selected_desc["CQ500-CT-1"] = uid1, "CT Thin Plain"
  hus["CQ500-CT-1"], zs["CQ500-CT-1"] = thin1.hu, 2.5 * np.arange(8)
  with quiet():
    sops["CQ500-CT-1"] = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths1]
  reads_for(1, {})

  # CQ500CT2: a folder with no reads.csv row. Row CQ500-CT-3: no folder.
  folder = root / "CQ500CT2 CQ500CT2" / "Unknown Study"
  _series(study(seed + 2, slices=5).hu, folder / "CT 5mm", desc="CT 5mm", patient="CQ500-CT-2",
          study_uid=pydicom.uid.generate_uid(entropy_srcs=["cq2"]))
  reads_for(3, {"ICH": (1, 1, 1), "EDH": (1, 1, 1)})

  header = ["name", "Category"] + [f"{r}:{f}" for r in READERS for f in READ_FIELDS]
  with open(root / "reads.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(reads_rows)

  if with_bhx:
    # BHX: one box on the chosen series (slice 2), two on slice 3, one on the thin series
    # (not chosen), one whose SOPInstanceUID is in no CQ500 file.
    s0 = sops["CQ500-CT-0"]
    with quiet():
      thin_sop = str(pydicom.dcmread(sorted((root / "CQ500CT0 CQ500CT0" / "Unknown Study" / "CT PLAIN THIN")
                                            .glob("*.dcm"))[3], stop_before_pixels=True).SOPInstanceUID)
    entries = [(s0[2], "Intraparenchymal", 20.0, 24.0, 10.0, 8.0),
               (s0[3], "Intraparenchymal", 22.0, 26.0, 12.0, 6.0),
               (s0[3], "Subdural", 4.0, 10.0, 6.0, 30.0),
               (s0[3], "Chronic", 40.0, 40.0, 4.0, 4.0),
               (thin_sop, "Subarachnoid", 30.0, 30.0, 5.0, 5.0),
               ("1.2.3.4.5.6.7.8.9", "Epidural", 1.0, 1.0, 2.0, 2.0)]
    for sop, name, x, y, w_, h in entries:
      boxes.setdefault(sop, []).append((name, x, y, w_, h))
    (root / "bhx").mkdir()
    with open(root / "bhx" / "1_Initial_Manual_Labeling.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "data", "labelName", "labelType"])
      for sop, name, x, y, w_, h in entries:
        w.writerow([sop, "", "", str({"x": x, "y": y, "width": w_, "height": h}), name, "Box"])
  return Cq500Fixture(root, selected, selected_desc, hus, zs, sops, labels, reads,
                      "CQ500CT2 CQ500CT2", "CQ500-CT-3", bad_file, boxes)


# --- Building and reading, as a user would ----------------------------------------------


def build(builder_cls, config, manual_dir, data_dir, workers: int = 1):
  """`tfds build`-equivalent: download_and_prepare from manual_dir, `workers` build processes."""
  import os

  import tensorflow_datasets as tfds

  builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
  tfds.display_progress_bar(False)
  old = os.environ.get("ICH_JAX_BUILD_WORKERS")
  os.environ["ICH_JAX_BUILD_WORKERS"] = str(workers)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  finally:
    if old is None:
      del os.environ["ICH_JAX_BUILD_WORKERS"]
    else:
      os.environ["ICH_JAX_BUILD_WORKERS"] = old
  return builder


def records(builder, split=None) -> list[dict]:
  """All records of `split`, or of every non-empty split.

  Each is also read as the pipeline reads it (`ich_jax.data.records.decoded_source`,
  what `datasets.open_split` returns) and must equal TFDS's decoding.
  """
  from ich_jax.data import records as records_lib
  from tests.data.test_records import assert_same_record

  splits = [split] if split else [s for s, info in builder.info.splits.items() if info.num_examples]
  out = []
  for s in splits:
    src, decoded = builder.as_data_source(s), records_lib.decoded_source(builder, s)
    for i in range(len(src)):
      out.append(src[i])
      assert_same_record(decoded[i], out[-1])
  return out


def report(builder) -> dict:
  from data_builders.build_report import REPORT_FILE
  import json
  return json.loads((pathlib.Path(builder.data_path) / REPORT_FILE).read_text())


def text(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def copy_tree(src, dst) -> pathlib.Path:
  shutil.copytree(src, dst)
  return pathlib.Path(dst)
