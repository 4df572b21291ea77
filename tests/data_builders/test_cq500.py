"""`cq500` built by TFDS from a fixture in qure.ai's layout: series selection, majority labels, BHX boxes, report."""

import numpy as np
import pydicom
import pytest

from data_builders import dicom_slices, resize
from data_builders.cq500 import cq500 as C
from tests.data_builders import fixtures

RES = 32
text = fixtures.text


def build(manual_dir, data_dir, level="slice", **overrides):
  cfg = C.Cq500Config(name=f"fixture_{level}", level=level, resolution=RES, min_shards=2, max_boxes=4, **overrides)
  return fixtures.build(C.Cq500, cfg, manual_dir, data_dir)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
  return fixtures.write_cq500(tmp_path_factory.mktemp("cq500") / "manual")


@pytest.fixture(scope="module")
def slices(fx, tmp_path_factory):
  return build(fx.root, tmp_path_factory.mktemp("tfds"))


def by_scan(recs):
  out = {}
  for r in recs:
    out.setdefault(text(r["patient_id"]), []).append(r)
  return {k: sorted(v, key=lambda r: int(r["slice_index"])) for k, v in out.items()}


def test_chosen_series_in_order_with_majority_scan_labels(fx, slices):
  scans = by_scan(fixtures.records(slices, "test"))
  assert set(scans) == {"CQ500-CT-0", "CQ500-CT-1"}
  for name, recs in scans.items():
    assert {text(r["series_id"]) for r in recs} == {fx.selected[name]}
    assert text(recs[0]["series_description"]) == fx.selected_description[name]
    assert [text(r["sop_uid"]) for r in recs] == fx.sops[name]      # sorted by z, not by file name
    fit = resize.Fit(fx.hu[name].shape[1:], RES)
    np.testing.assert_array_equal(np.stack([r["image"] for r in recs]), fit.image(fx.hu[name]))
    np.testing.assert_allclose([float(r["z_position"]) for r in recs], fx.z[name], atol=1e-3)
    for r in recs:
      np.testing.assert_array_equal(r["labels"], fx.labels[name])
      np.testing.assert_array_equal(r["reader_labels"], fx.reads[name])
      assert int(r["scan_level_label"]) == 1
      # The header window the phantom writer puts in every slice (brain 40/80): intensity dicom_window's input.
      np.testing.assert_array_equal(r["dicom_window"], [40.0, 80.0])
  # CT-0: ICH 2 of 3, IPH 3 of 3, SAH 2 of 3, SDH 1 of 3 (not a majority).
  np.testing.assert_array_equal(fx.labels["CQ500-CT-0"], [1, 0, 1, 0, 1, 0])
  assert float(scans["CQ500-CT-1"][0]["slice_thickness"]) == pytest.approx(2.5)


def test_selection_and_its_reasons_are_recorded_per_study(fx, slices):
  sel = fixtures.report(slices)["selection"]
  assert set(sel) == {"CQ500-CT-0", "CQ500-CT-1"}
  s0 = sel["CQ500-CT-0"]
  assert s0["series_uid"] == fx.selected["CQ500-CT-0"]
  why = {c["description"]: " ".join(c["reasons"]) for c in s0["candidates"] if not c["accepted"]}
  assert "sharp kernel 'BONE'" in why["CT BONE"]
  assert "contrast" in why["CT POST CONTRAST"]
  assert "not axial" in why["CT Brain Coronal"]
  assert "localizer" in why["Topogram"]
  assert "thickness closest to the preferred 5 mm" in s0["reason"] and "'CT PLAIN THIN'" in s0["reason"]
  assert "sharp kernel 'H70h'" in sel["CQ500-CT-1"]["reason"]


def test_report_lists_the_bad_file_and_unmatched_folder_and_row(fx, slices):
  skipped = {item["file"]: item["reason"] for item in fixtures.report(slices)["skipped"]}
  assert set(skipped) == {str(fx.bad_file), str(fx.root / fx.unmatched_folder), f"{fx.root / 'reads.csv'}:4"}
  assert "no row CQ500-CT-2 in" in skipped[str(fx.root / fx.unmatched_folder)]
  assert skipped[f"{fx.root / 'reads.csv'}:4"].startswith("CQ500-CT-3: no folder CQ500CT3")


def test_bhx_boxes_join_by_sop_instance_uid(fx, slices):
  scans = by_scan(fixtures.records(slices, "test"))
  scale = RES / fixtures.MATRIX
  for r in scans["CQ500-CT-0"]:
    assert int(r["boxes_annotated"]) == 1
    want = fx.boxes.get(text(r["sop_uid"]), [])
    labels = r["box_labels"]
    assert list(labels[labels > 0]) == [C.BHX_LABELS[name] for name, *_ in want]
    for i, (_, x, y, w, h) in enumerate(want):
      np.testing.assert_allclose(r["boxes"][i], np.asarray([y, x, y + h, x + w]) * scale)
    assert not r["boxes"][len(want):].any()
  assert sum(int((r["box_labels"] > 0).sum()) for r in scans["CQ500-CT-0"]) == 4
  assert all(int(r["boxes_annotated"]) == 0 and not r["box_labels"].any() for r in scans["CQ500-CT-1"])
  bhx = fixtures.report(slices)["bhx"]
  assert (bhx["joined_to_built_slices"], bhx["on_series_not_chosen"], bhx["sop_uid_in_no_cq500_file"]) == (2, 1, 1)


def test_scans_level_and_thin_preference(fx, tmp_path):
  scans = build(fx.root, tmp_path, level="scan", preferred_thickness_mm=0.625)
  recs = {text(r["patient_id"]): r for r in fixtures.records(scans, "test")}
  r0 = recs["CQ500-CT-0"]
  assert text(r0["series_description"]) == "CT PLAIN THIN"       # the thin series when thin is preferred
  assert r0["volume"].shape == (12, RES, RES) and r0["labels"].shape == (6,)
  assert r0["boxes"].shape == (12, 4, 4) and int(r0["boxes_annotated"]) == 1
  assert int((r0["box_labels"] > 0).sum()) == 1                   # the box drawn on the thin series
  assert "CT PLAIN THIN" in text(r0["selection_reason"])
  r1 = recs["CQ500-CT-1"]
  np.testing.assert_array_equal(r1["volume"], resize.Fit(fx.hu["CQ500-CT-1"].shape[1:], RES).image(fx.hu["CQ500-CT-1"]))
  assert np.all(np.diff(r1["z_positions"]) > 0)


def test_reads_csv_errors_name_file_line_column_and_value(tmp_path):
  header = ["name", "Category"] + [f"{r}:{f}" for r in fixtures.READERS for f in fixtures.READ_FIELDS]
  row = ["CQ500-CT-7", "B1"] + ["0"] * (len(header) - 2)
  row[header.index("R2:SDH")] = "?"
  path = tmp_path / "reads.csv"
  path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
  with pytest.raises(ValueError, match=r"reads.csv:2: column R2:SDH: '\?' for CQ500-CT-7 is not 0 or 1"):
    C.read_reads(path)
  assert C.scan_number("CQ500CT12 CQ500CT12") == C.scan_number("CQ500-CT-12") == 12
  assert C.scan_number("CQ500CT1") == 1 and C.scan_number("Unknown Study") is None


def test_a_slice_without_rescale_tags_is_skipped_not_kept_as_stored_values(fx, tmp_path):
  manual = fixtures.copy_tree(fx.root, tmp_path / "m")
  path = manual / "CQ500CT0 CQ500CT0" / "Unknown Study" / "CT 5mm" / "CT000002.dcm"
  with dicom_slices.quiet():
    ds = pydicom.dcmread(path)
    del ds.RescaleIntercept   # the stored values of this unsigned series are HU + 1024
    ds.save_as(path, enforce_file_format=True)
  b = build(manual, tmp_path / "d")
  skipped = {item["file"]: item["reason"] for item in fixtures.report(b)["skipped"]}
  assert skipped[str(path)] == ("missing required tag RescaleIntercept (Type 1 in the CT Image module; without it "
                                "the stored values are not HU)")
  recs = by_scan(fixtures.records(b, "test"))["CQ500-CT-0"]
  kept = [text(r["sop_uid"]) for r in recs]
  assert kept == [s for s in fx.sops["CQ500-CT-0"] if s != str(ds.SOPInstanceUID)] and len(kept) == 5
  keep = [i for i, s in enumerate(fx.sops["CQ500-CT-0"]) if s != str(ds.SOPInstanceUID)]
  fit = resize.Fit(fx.hu["CQ500-CT-0"].shape[1:], RES)
  np.testing.assert_array_equal(np.stack([r["image"] for r in recs]), fit.image(fx.hu["CQ500-CT-0"][keep]))
