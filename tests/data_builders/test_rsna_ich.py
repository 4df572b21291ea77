"""`rsna_ich` built by TFDS from a fixture in Kaggle's layout: labels, order, HU and the report on every quirk."""
import collections
import json
import pathlib
import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_modality_lut

from data_builders import build_report, dicom_slices, ingest, resize
from data_builders.rsna_ich import rsna_ich as R
from ich_jax.data import dicom
from tests.data_builders import fixtures

RES = 32   # the fixture's 64 matrix (and the real 512 slice) stored at 32


def build(manual_dir, data_dir, level="slice", workers=1, name=None, **overrides):
  cfg = R.RsnaIchConfig(name=name or f"fixture_{level}", level=level, resolution=RES, min_shards=2,
                        validation_fraction=0.2, **overrides)
  return fixtures.build(R.RsnaIch, cfg, manual_dir, data_dir, workers)


def records(builder, split):
  return fixtures.records(builder, split)


text = fixtures.text


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
  return fixtures.write_rsna(tmp_path_factory.mktemp("rsna") / "manual")


@pytest.fixture(scope="module")
def slices(fx, tmp_path_factory):
  return build(fx.root, tmp_path_factory.mktemp("tfds"))


def expected_image(hu):
  return resize.Fit(hu.shape, RES).image(hu)


def test_every_good_image_is_a_record_with_its_labels_hu_and_place(fx, slices):
  recs = {text(r["sop_uid"]): r for s in ("train", "validation") for r in records(slices, s)}
  good = {i for i, img in fx.images.items() if img.path.name not in fx.bad and img.labels is not None}
  assert set(recs) == good
  for image_id, r in recs.items():
    truth = fx.images[image_id]
    np.testing.assert_array_equal(r["labels"], truth.labels, err_msg=image_id)
    np.testing.assert_array_equal(r["image"], expected_image(truth.hu), err_msg=image_id)
    assert r["z_position"] == pytest.approx(truth.z, abs=1e-3)
    assert (text(r["patient_id"]), text(r["study_id"]), text(r["series_id"])) == (truth.patient, truth.study,
                                                                                  truth.series)
  # Several shards per split, ArrayRecord.
  assert slices.info.splits["train"].num_shards >= 2
  assert slices.info.file_format.value == "array_record"


def test_slices_are_ordered_along_the_normal_whatever_the_file_names(fx, slices):
  by_series = collections.defaultdict(list)
  for s in ("train", "validation"):
    for r in records(slices, s):
      by_series[text(r["series_id"])].append((int(r["slice_index"]), float(r["z_position"]), text(r["sop_uid"])))
  for series, rows in by_series.items():
    rows.sort()
    true_order = [i for i in fx.series[series] if fx.images[i].path.name not in fx.bad]
    assert [sop for _, _, sop in rows] == true_order, series
    assert np.all(np.diff([z for _, z, _ in rows]) >= 0)   # one series holds two slices at one position
  # Gantry tilt: positions step along the table, not the normal; gaps are the projected 4.5 mm.
  tilt = sorted(by_series[fx.tilt_series])
  np.testing.assert_allclose(np.diff([z for _, z, _ in tilt]), 4.5 * np.cos(np.radians(15)), rtol=1e-4)
  # A skipped slice leaves a gap in slice_index, so (series_id, slice_index) keeps naming the same slice.
  first = fx.series[next(s for s in fx.series if any(fx.images[i].path.name in fx.bad for i in fx.series[s]))]
  indices = sorted(i for i, _, sop in by_series[fx.images[first[0]].series])
  assert indices == [0, 1, 3, 5]


def test_12bit_intercept_quirk_gives_true_hu(fx, slices):
  recs = [r for s in ("train", "validation") for r in records(slices, s) if text(r["series_id"]) == fx.quirk_series]
  assert len(recs) == 5
  for r in recs:
    truth = fx.images[text(r["sop_uid"])].hu
    np.testing.assert_array_equal(r["image"], expected_image(truth))
    assert r["image"].min() < -900 and r["image"].max() > 300   # air and bone, not wrapped
  report = json.loads((pathlib.Path(slices.data_path) / build_report.REPORT_FILE).read_text())
  corrected = sum(c.get("slices with the 12-bit intercept corrected", 0) for c in report["counts"].values())
  assert corrected == 5


def test_multivalued_window_tags_take_the_first_value(fx, slices):
  recs = [r for s in ("train", "validation") for r in records(slices, s) if text(r["series_id"]) == fx.window_series]
  assert recs and all(tuple(r["dicom_window"]) == (36.0, 80.0) for r in recs)
  real = [r for s in ("train", "validation") for r in records(slices, s) if text(r["series_id"]) == fx.real_series]
  assert tuple(real[0]["dicom_window"]) == (40.0, 100.0)    # "40\40\40" / "100\100\200" in the file


def test_real_head_ct_slice_hu_equals_pydicoms_modality_lut(fx, slices):
  ref = pydicom.dcmread(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
  lut = apply_modality_lut(ref.pixel_array, ref)
  path = fx.images[fx.series[fx.real_series][0]].path
  hu, rescale = dicom_slices.read_pixels(path, dicom.slice_hu)
  assert not rescale.quirk_12bit
  np.testing.assert_array_equal(hu, lut.astype(np.float32))
  (rec,) = [r for s in ("train", "validation") for r in records(slices, s) if text(r["series_id"]) == fx.real_series]
  np.testing.assert_array_equal(rec["image"], expected_image(lut))
  np.testing.assert_allclose(rec["pixel_spacing"], np.asarray([0.431, 0.431]) * 512 / RES, rtol=1e-6)


def test_report_lists_exactly_the_bad_files(fx, slices):
  report = json.loads((pathlib.Path(slices.data_path) / build_report.REPORT_FILE).read_text())
  skipped = {pathlib.Path(item["file"]).name: item["reason"] for item in report["skipped"]}
  assert set(skipped) == set(fx.bad)
  assert "number of bytes of pixel data is less than expected" in skipped[f"{fixtures.CORRUPT_ID}.dcm"]
  jls = next(n for n, why in fx.bad.items() if why == "JPEG-LS")
  assert "JPEG-LS" in skipped[jls]
  no_position = next(n for n, why in fx.bad.items() if why == "missing ImagePositionPatient")
  assert skipped[no_position] == "missing required tag ImagePositionPatient"
  no_intercept = next(n for n, why in fx.bad.items() if why == "missing RescaleIntercept")
  assert skipped[no_intercept].startswith("missing required tag RescaleIntercept (Type 1 in the CT Image module")
  notes = [n["note"] for n in report["notes"] if pathlib.Path(n["file"]).stem in fx.series[fx.images[
      fx.duplicate_position].series]]
  assert any(n.startswith("duplicate slice position") and "both kept" in n for n in notes)
  assert report["counts"]["labels"]["label rows: exact duplicates dropped"] == fx.duplicate_rows


def test_splits_by_patient_and_unlabeled_test(fx, slices):
  patients = {s: {text(r["patient_id"]) for r in records(slices, s)} for s in ("train", "validation", "test")}
  assert patients["train"] and patients["validation"] and not patients["train"] & patients["validation"]
  assert patients["test"] == {"ID_pat0t1"}
  test = records(slices, "test")
  assert len(test) == 4 and all(np.isnan(r["labels"]).all() for r in test)
  for r in test:
    np.testing.assert_array_equal(r["image"], expected_image(fx.images[text(r["sop_uid"])].hu))


def test_scans_one_example_per_series_through_the_process_pool(fx, tmp_path):
  scans = build(fx.root, tmp_path, level="scan", workers=2)
  recs = {text(r["series_id"]): r for s in ("train", "validation", "test") for r in records(scans, s)}
  assert set(recs) == set(fx.series)
  for series, r in recs.items():
    ids = [i for i in fx.series[series] if fx.images[i].path.name not in fx.bad]
    assert [text(s) for s in r["sop_uids"]] == ids
    assert r["volume"].shape == (len(ids), RES, RES) and r["volume"].dtype == np.int16
    np.testing.assert_array_equal(r["volume"], np.stack([expected_image(fx.images[i].hu) for i in ids]))
    np.testing.assert_allclose(r["z_positions"], [fx.images[i].z for i in ids], atol=1e-3)
    if series == fx.test_series:
      assert np.isnan(r["labels"]).all()
    else:
      np.testing.assert_array_equal(r["labels"], np.stack([fx.images[i].labels for i in ids]))
  assert recs[fx.quirk_series]["slice_thickness"] == pytest.approx(2.5)   # the gap: RSNA has no SliceThickness


def _small_layout(root, rows, files):
  """A two-image layout with hand-written CSV rows, for the join errors."""
  (root / "stage_2_train").mkdir(parents=True)
  with dicom_slices.quiet():
    for image_id in files:
      dicom.write_series(np.zeros((1, 8, 8)), (5, 1, 1), root / "stage_2_train", sop_uids=[image_id],
                         series_uid="ID_ser1", study_uid="ID_st1", patient_id="ID_p1",
                         file_names=lambda i, uid: f"{uid}.dcm")
  (root / "stage_2_train.csv").write_text("ID,Label\n" + "".join(f"{r},{v}\n" for r, v in rows))


def _rows(image_id, values=(0, 0, 0, 0, 0, 0)):
  from ich_jax import LABELS
  return [(f"{image_id}_{s}", v) for s, v in zip(LABELS, values)]


def test_conflicting_duplicate_rows_are_an_error_naming_the_id(tmp_path):
  rows = _rows("ID_000000aaa") + [("ID_000000aaa_subdural", 1)]
  _small_layout(tmp_path / "m", rows, ["ID_000000aaa"])
  with pytest.raises(ValueError, match=r"conflicting duplicate rows for ID_000000aaa_subdural: Label 0 \(line 7\) "
                                       r"and 1 \(line 8\)"):
    build(tmp_path / "m", tmp_path / "d")


def test_label_without_image_and_image_without_label_name_both(tmp_path):
  _small_layout(tmp_path / "m", _rows("ID_000000aaa") + _rows("ID_000000bbb"), ["ID_000000aaa", "ID_000000ccc"])
  with pytest.raises(ValueError) as e:
    build(tmp_path / "m", tmp_path / "d")
  msg = str(e.value)
  assert "stage_2_train.csv: rows for ID_000000bbb but no image " in msg and "stage_2_train/ID_000000bbb.dcm" in msg
  assert "stage_2_train/ID_000000ccc.dcm: no rows ID_000000ccc_<subtype> in " in msg


def test_missing_subtype_rows_and_bad_values_name_file_line_and_value(tmp_path):
  _small_layout(tmp_path / "m", _rows("ID_000000aaa")[:5], ["ID_000000aaa"])
  with pytest.raises(ValueError, match="image ID_000000aaa has no row for subdural"):
    build(tmp_path / "m", tmp_path / "d")
  shutil.rmtree(tmp_path / "m")
  _small_layout(tmp_path / "m", _rows("ID_000000aaa")[:5] + [("ID_000000aaa_subdural", "yes")], ["ID_000000aaa"])
  with pytest.raises(ValueError, match=r"stage_2_train.csv:7: column Label: 'yes' for ID_000000aaa_subdural"):
    build(tmp_path / "m", tmp_path / "d")


def test_real_config_through_the_registry_and_manual_dir(fx, tmp_path):
  """What a user runs: the registry, a real config (256), manual_dir as the README lays it out."""
  from ml_collections import ConfigDict

  from ich_jax.data import datasets

  cfg = ConfigDict({"name": "rsna_ich", "config": "slices256", "data_dir": str(tmp_path), "manual_dir": str(fx.root)})
  datasets.ensure_built(cfg)
  src = datasets.open_split(cfg, "train+validation")
  rec = src[0]
  assert rec["image"].shape == (256, 256) and rec["labels"].shape == (6,)
  assert len(src) == sum(1 for img in fx.images.values() if img.labels is not None and img.path.name not in fx.bad)


def test_a_series_mixing_matrix_sizes_is_skipped_naming_each_file_and_the_sizes(tmp_path):
  """Resizing each slice to the stored size on its own would stack two fields of view as one volume: the
  series is refused (as prediction refuses it), the series beside it is built."""
  root, train = tmp_path / "m", tmp_path / "m" / "stage_2_train"
  rows, written = [], {}
  for series, shapes in (("ID_mixed", [(16, 16)] * 3 + [(12, 16)]), ("ID_whole", [(16, 16)] * 3)):
    for k, shape in enumerate(shapes):
      sop = f"ID_{series[3:]}{k:03d}"
      with dicom_slices.quiet():
        (path,) = dicom.write_series(np.full((1, *shape), 30.0), (5, 1, 1), train, sop_uids=[sop],
                                     series_uid=series, study_uid=f"{series}_st", patient_id=f"{series}_p",
                                     z_positions=[5.0 * k], file_names=lambda i, uid: f"{uid}.dcm")
      fixtures.strip_to_rsna(path)
      written[sop] = (series, path)
      rows += _rows(sop)
  (root / "stage_2_train.csv").write_text("ID,Label\n" + "".join(f"{r},{v}\n" for r, v in rows))
  b = build(root, tmp_path / "d")
  skipped = {item["file"]: item["reason"] for item in fixtures.report(b)["skipped"]}
  mixed = {sop: path for sop, (series, path) in written.items() if series == "ID_mixed"}
  assert set(skipped) == {str(p) for p in mixed.values()}
  sizes = (f"16x16: 3 slices, e.g. {mixed['ID_mixed000']}; 12x16: 1 slice, e.g. {mixed['ID_mixed003']}")
  assert skipped[str(mixed["ID_mixed003"])] == (f"Rows/Columns 12x16, but series ID_mixed mixes matrix sizes "
                                                f"({sizes}): series not built")
  assert skipped[str(mixed["ID_mixed000"])].startswith("Rows/Columns 16x16, but series ID_mixed mixes")
  assert sorted(text(r["sop_uid"]) for r in fixtures.records(b)) == ["ID_whole000", "ID_whole001", "ID_whole002"]


# --- Seed 003's own test set (the *_stage1 configs) and the public code's neighbour input ----------------------

def _series_of(fx) -> dict[str, list[str]]:
  """patient → series UIDs."""
  out = {}
  for uid, ids in fx.series.items():
    out.setdefault(fx.images[ids[0]].patient, []).append(uid)
  return out


# Patient E's five slices each get another header window, one none at all (RSNA headers vary per slice):
# as written (first value of a multi-valued tag counts) and as seed 003's prepare_data.py reads it (int()).
HEADER_WINDOWS = [("30", "60"), ("50", "150"), None, (["36.7", "40"], ["81.9", "80"]), ("600", "2800")]


def _stage1_manual_dir(fx, root, held):
  root = fixtures.copy_tree(fx.root, root)
  from tests.data.test_dicom_window import set_header_windows

  (e,) = _series_of(fx)["ID_pat00e"]
  set_header_windows([root / fx.images[i].path.relative_to(fx.root) for i in fx.series[e]], HEADER_WINDOWS)
  if held is not None:
    with open(root / R.STAGE1_SUBMISSION, "w", newline="") as f:
      f.write("ID,Label\n" + "".join(f"{i}_{s},0.5\n" for i in held for s in R.LABELS))
  return root


def _build_stage1(root, data_dir):
  return build(root, data_dir, test_set="stage_1_test", name="fixture_stage1")


@pytest.fixture(scope="module")
def stage1(fx, tmp_path_factory):
  """Stage-1 test IDs: patient E's series and the second study of patient B, whose first study is stage-1
  training data (the overlap stage 2's training set has)."""
  by_patient = _series_of(fx)
  b1, b2 = by_patient["ID_pat00b"]
  (e,) = by_patient["ID_pat00e"]
  held = fx.series[e] + fx.series[b2]
  root = _stage1_manual_dir(fx, tmp_path_factory.mktemp("stage1") / "manual", held)
  return _build_stage1(root, tmp_path_factory.mktemp("tfds_stage1")), held, b1


def test_stage1_config_holds_out_exactly_the_stage1_test_images_by_patient(fx, stage1):
  b, held, b1 = stage1
  test = records(b, "test")
  assert sorted(text(r["sop_uid"]) for r in test) == sorted(held)
  for r in test:   # labelled (stage 2 released them), unlike stage_2_test
    truth = fx.images[text(r["sop_uid"])]
    np.testing.assert_array_equal(r["labels"], truth.labels)
    np.testing.assert_array_equal(r["image"], expected_image(truth.hu))
  seen = {s: {text(r["sop_uid"]) for r in records(b, s)} for s in ("train", "validation")}
  patients = {s: {fx.images[i].patient for i in ids} for s, ids in seen.items()}
  # Patient B's first study (stage-1 training images) is in no split; stage_2_test is not read.
  assert "ID_pat00b" not in patients["train"] | patients["validation"]
  assert not patients["train"] & patients["validation"]
  good = {i for i, img in fx.images.items() if img.path.name not in fx.bad and img.labels is not None}
  assert seen["train"] | seen["validation"] == good - set(held) - set(fx.series[b1])
  counts = fixtures.report(b)["counts"]["test"]
  placed = [i for i in fx.series[b1] if fx.bad.get(fx.images[i].path.name) != "missing ImagePositionPatient"]
  assert counts["images left out of train and validation: their patient has stage-1 test images"] == len(placed)
  assert counts["patients with both stage-1 training and test images"] == 1
  assert counts["stage-1 test images held out"] == len(held)


def test_stage1_ids_from_the_test_folder_and_the_fallback_without_them(fx, tmp_path):
  # The stage-1 download's image folder: its file names are the IDs.
  folder = tmp_path / "m1" / "stage_1_test_images"
  folder.mkdir(parents=True)
  for i in ("ID_00000000a", "ID_00000000b"):
    (folder / f"{i}.dcm").write_bytes(b"")
  assert R.stage1_test_ids(tmp_path / "m1") == ({"ID_00000000a", "ID_00000000b"}, str(folder))
  assert R.stage1_test_ids(tmp_path) == (None, "")
  # The fallback's rule: ten patients of ten images, 25 % wanted: the first three in hashed order (30 images).
  series = {f"s{k}": [f"ID_{k}_{j}" for j in range(10)] for k in range(10)}
  test, left_out, patients = R.stage1_split(series, {s: f"p{s}" for s in series}, None, 0.25)
  assert patients == set(ingest.stable_order(patients | {f"ps{k}" for k in range(10)}, "rsna_ich:stage_1_test")[:3])
  assert test == {s: series[s] for s in series if f"p{s}" in patients} and not left_out
  (tmp_path / R.STAGE1_SUBMISSION).write_text("ID,Label\nID_00000000a_any,0.5\nID_00000000a_subdurl,0.5\n")
  with pytest.raises(ValueError, match=r"stage_1_sample_submission.csv:3: column ID: 'ID_00000000a_subdurl'"):
    R.stage1_test_ids(tmp_path)

  # No IDs in manual_dir: whole patients held out, in hashed order, until the stage-1 share of the images.
  b = _build_stage1(_stage1_manual_dir(fx, tmp_path / "m2", None), tmp_path / "d")
  test, rest = records(b, "test"), records(b, "train") + records(b, "validation")
  held = {text(r["patient_id"]) for r in test}
  assert held and not held & {text(r["patient_id"]) for r in rest}
  good = {i for i, img in fx.images.items() if img.path.name not in fx.bad and img.labels is not None}
  assert {text(r["sop_uid"]) for r in test + rest} == good   # nobody left out: no partial patient
  order = ingest.stable_order({fx.images[i].patient for i in good}, salt="rsna_ich:stage_1_test")
  assert held == set(order[:len(held)])
  assert any("not comparable with seed 003's Table 3" in n["note"] for n in fixtures.report(b)["notes"])


def _public_code_input(fx, series_ids, i):
  """Seed 003's 2DNet (prepare_data.py, dataset.py) by hand: slices i-1, i, i+1 (the edge slice repeated), each
  with int() of its header window, clipped to [c - w // 2, c + w // 2], then min-max scaled over the slice."""
  channels = []
  for j in (max(i - 1, 0), i, min(i + 1, len(series_ids) - 1)):
    window = HEADER_WINDOWS[j] or ("40", "80")          # none in the header: the recipe's 40/80
    c, w = (int(float(v[0] if isinstance(v, list) else v)) for v in window)
    x = np.clip(expected_image(fx.images[series_ids[j]].hu).astype(np.float64), c - w // 2, c + w // 2)
    channels.append((x - x.min()) / (x.max() - x.min()))
  return np.stack(channels, axis=-1)


def test_header_window_neighbour_input_is_the_public_codes(fx, stage1):
  from ich_jax.data import config_defaults, records as records_lib, series_index, slice_inputs, slice_plan, windows

  b, _, _ = stage1
  cfg = config_defaults.default_data_config()
  cfg.update({"image_size": RES, "recipe": windows.RSNA_NEIGHBOURS, "intensity": "dicom_window"})
  cfg.augment.enabled = False
  src = series_index.SeriesSource(records_lib.decoded_source(b, "test"))
  (e,) = _series_of(fx)["ID_pat00e"]
  index = {text(src[k]["sop_uid"]): k for k in range(len(src))}
  for i, image_id in enumerate(fx.series[e]):
    got = slice_inputs.load(src, slice_plan.from_config(cfg), index[image_id])["image"]
    np.testing.assert_allclose(got, _public_code_input(fx, fx.series[e], i), atol=2e-6, err_msg=image_id)
    # The fixed 40/80 is another input wherever the header says otherwise; where it says nothing, the same one
    # (the phantom spans 0..80 HU, so min-max scaling leaves the brain window as it is).
    fixed = windows.apply_window(expected_image(fx.images[image_id].hu), 40, 80)
    assert np.allclose(got[..., 1], fixed, atol=1e-6) == (HEADER_WINDOWS[i] is None), image_id
