"""Bundle → predict on studies as a scanner writes them: phantom DICOM with decoy series, NIfTI, a real head
slice, broken folders, batch mode, outputs that would overwrite inputs, a pinned bundle identity. The bundle's
own behaviour (tampering, combining, exporting) is tested in tests/bundle; the `runs` fixture is tests/conftest.py's."""
import csv
import dataclasses
import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

import ich_jax
from ich_jax import bundle as bundle_lib
from ich_jax import predict
from ich_jax.bundle import export
from ich_jax.data import dicom, series_index, study as study_lib
from ich_jax.eval.prediction_files import PROB_COLUMNS
from ich_jax.train import loop
from tests.fake_runs import edited_bundle, make_phantom, write_study

OPTIONS = predict.Options(batch_size=8, progress=False)


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _eval_probabilities(config, workdir, hu):
  """What `launch.py --mode eval` computes for these HU slices: the checkpoint through the eval loop."""
  exp, state, _ = loop.restore_for_eval(config, workdir)
  records = [{"image": hu[i], "series_id": b"s", "study_id": b"s", "slice_index": i} for i in range(len(hu))]
  preds = loop.predict_split(exp, state, series_index.SeriesSource(records), batch_size=config.eval.batch_size)
  return preds["probabilities"]


def test_dicom_folder_with_decoys_gives_the_checkpoints_eval_probabilities_and_a_mask_on_its_grid(runs, tmp_path):
  p = make_phantom(3)
  files = write_study(tmp_path / "study", p)
  report = predict.predict_study(runs["pair"], tmp_path / "study", tmp_path / "out", OPTIONS)
  out = tmp_path / "out"
  assert sorted(f.name for f in out.iterdir()) == [".ich-jax-output.json", "mask.nii.gz", "overview.png",
                                                  "overview_sc.dcm", "predictions.csv", "report.json", "report.md",
                                                  "seg.dcm"]
  # The soft-tissue axial series, chosen over the bone kernel and the sagittal reformat, and why.
  chosen = pydicom.dcmread(files[0])
  assert report["series"]["series_uid"] == chosen.SeriesInstanceUID and report["series"]["num_slices"] == len(p.hu)
  rejected = {c["description"]: c["reasons"] for c in report["series"]["selection"]["candidates"] if not c["accepted"]}
  assert "sharp kernel 'BONE'" in rejected["HEAD BONE"] and "not axial" in " ".join(rejected["SAG MPR"])
  # Per slice, in z order, the probabilities evaluation gives on the same slices.
  rows = _csv(out / "predictions.csv")
  assert [r["sop_uid"] for r in rows] == [pydicom.dcmread(f).SOPInstanceUID for f in files]
  np.testing.assert_allclose([float(r["z_position"]) for r in rows], p.z_positions_mm, atol=1e-4)
  prob = np.array([[float(r[c]) for c in PROB_COLUMNS] for r in rows])
  expected = _eval_probabilities(runs["cls_config"], runs["cls"], p.hu)
  np.testing.assert_allclose(prob, expected, rtol=1e-5, atol=1e-6)
  # Study level: the most suspicious slice's probability, decided at the bundle's threshold.
  f = report["findings"]
  for c, name in enumerate(("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")):
    assert f[name]["probability"] == pytest.approx(expected[:, c].max(), rel=1e-5)
    assert f[name]["positive"] == (f[name]["probability"] >= report["threshold"])
  # The mask is on the DICOM grid: voxel (i, j, k) = column i, row j of slice k, at its ImagePositionPatient (RAS).
  img = nib.load(out / "mask.nii.gz")
  assert img.shape == (128, 128, len(p.hu))
  for k in (0, len(files) - 1):
    lps = np.array([float(v) for v in pydicom.dcmread(files[k]).ImagePositionPatient])
    np.testing.assert_allclose(img.affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
  np.testing.assert_allclose(img.header.get_zooms(), (p.pixel_spacing_mm[1], p.pixel_spacing_mm[0], 5.0), atol=1e-4)
  # Its content: the U-Net's own prediction on those slices (32² input), back on the 128² grid; volumes from it.
  seg = runs["pair"].members["1.seg"]
  images = runs["pair"].preprocess(study_lib.read_study(tmp_path / "study").records())
  small = seg.jitted("predict")(seg.state, {"image": images[seg.plan]})["pred_mask"]
  mask = np.asarray(img.dataobj).transpose(2, 1, 0)
  np.testing.assert_array_equal(mask, np.repeat(np.repeat(np.asarray(small), 4, axis=1), 4, axis=2))
  voxel_ml = 5.0 * p.pixel_spacing_mm[0] * p.pixel_spacing_mm[1] / 1000
  assert report["volumes"]["blood"]["ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml)
  assert report["volumes"]["blood"]["size_bin"] == ich_jax.size_bin(report["volumes"]["blood"]["ml"])
  assert [float(r["blood_ml"]) for r in rows] == pytest.approx(list(np.count_nonzero(mask, axis=(1, 2)) * voxel_ml))
  assert set(report["timings"]) >= {"read_s", "preprocess_s", "model_s", "write_s", "total_s"}
  assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "report.md").read_text()
  assert "HEAD NONCON" in md and "Rejected" in md and "ABC/2" in md


def test_detection_entries_are_the_boxes_at_the_threshold_on_the_slices_grid():
  """Injected detections on a 64² detector input, mapped by hand to a 128 × 96 slice (rows × 2, columns × 1.5)."""
  classes = (("intraparenchymal",), ("epidural", "subdural"))
  found = {"boxes": np.array([[[8, 4, 16, 20], [0, 0, 64, 64], [1, 2, 3, 4]],
                              [[10, 10, 20, 30], [30, 30, 40, 40], [0, 0, 0, 0]]], np.float32),
           "scores": np.array([[0.3, 0.9, 0.2], [0.5, 0.7, 0.0]], np.float32),
           "classes": np.array([[1, 0, 0], [0, 1, -1]], np.int32), "input_shape": (64, 64)}
  got = predict.detection_entries(found, classes, (128, 96), 0.3,
                                  per_slice={"sop_uid": ["u0", "u1"], "z_position": [-5.0, 0.0]})
  # Slice order, then score; 0.2 is under the threshold and class -1 is padding.
  assert [(e["slice_index"], e["sop_uid"], e["z_position"], e["class"], e["subtypes"], e["box"]) for e in got] == [
      (0, "u0", -5.0, "IPH", ["intraparenchymal"], [0.0, 0.0, 128.0, 96.0]),
      (0, "u0", -5.0, "EDH/SDH", ["epidural", "subdural"], [16.0, 6.0, 32.0, 30.0]),
      (1, "u1", 0.0, "EDH/SDH", ["epidural", "subdural"], [60.0, 45.0, 80.0, 60.0]),
      (1, "u1", 0.0, "IPH", ["intraparenchymal"], [20.0, 15.0, 40.0, 45.0])]
  assert [e["score"] for e in got] == pytest.approx([0.9, 0.3, 0.7, 0.5])
  assert predict.detection_entries(found, classes, (128, 96), 0.95) == []
  # On an overview tile of 256²: rows × 2, columns × 8/3 of the slice's.
  assert predict.tile_boxes(got, 1, (128, 96), (256, 256)) == [
      {"box": [120.0, 120.0, 160.0, 160.0], "label": "EDH/SDH 0.70"},
      {"box": [40.0, 40.0, 80.0, 120.0], "label": "IPH 0.50"}]


def test_a_detectors_mask_gives_volumes_per_class_and_its_findings_say_what_a_group_means():
  classes = (("intraparenchymal",), ("epidural", "subdural"), ("subarachnoid",))
  mask = np.zeros((3, 10, 10), np.uint8)
  mask[0, :2, :5] = 1            # EDH/SDH's label (its smallest LABELS index: epidural)
  mask[1, :3, :3] = 5            # a subdural label counts for the same class
  mask[1, 5:9, 5:9] = 2          # IPH: 16 voxels on slice 1, 4 on slice 2 (one 3-D bleed)
  mask[2, 5:7, 5:7] = 2
  got = predict.volumes(mask, (5.0, 0.5, 0.4), subtypes=True, classes=classes)
  voxel = 5.0 * 0.5 * 0.4 / 1000
  assert "per_subtype" not in got
  assert {k: (e["subtypes"], e["ml"]) for k, e in got["per_class"].items()} == {
      "IPH": (["intraparenchymal"], pytest.approx(20 * voxel)),
      "EDH/SDH": (["epidural", "subdural"], pytest.approx(19 * voxel)),
      "SAH": (["subarachnoid"], 0.0)}
  assert got["blood"]["ml"] == pytest.approx(39 * voxel)
  assert got["abc2"]["of"] == "largest IPH bleed" and got["abc2"]["voxel_ml"] == pytest.approx(20 * voxel)
  assert got["abc2"]["slices"] == [1, 2]
  prob = np.array([[0.6, 0.4, 0.3, 0.0, 0.1, 0.4]], np.float32)
  f = predict.study_findings(prob, 0.35, classes=classes)
  assert "EDH/SDH" in f["epidural"]["note"] and f["subdural"]["note"] == f["epidural"]["note"]
  assert f["epidural"]["positive"] and "note" not in f["intraparenchymal"]
  assert f["intraventricular"]["probability"] is None and "no class of the detector" in f["intraventricular"]["note"]


def test_a_detector_bundle_reports_its_boxes_class_volumes_mask_and_overview_on_the_dicom_grid(detection_run,
                                                                                                tmp_path):
  det = detection_run["bundle"]
  p = make_phantom(21)
  files = write_study(tmp_path / "study", p)
  report = predict.predict_study(det, tmp_path / "study", tmp_path / "out", OPTIONS)
  out = tmp_path / "out"
  assert {"mask.nii.gz", "overview.png", "report.json", "report.md"} <= {f.name for f in out.iterdir()}
  assert json.loads((out / "report.json").read_text())["detections"] == report["detections"]
  # The detector's own outputs on these slices (64² input), by hand: boxes × 2 onto the 128² DICOM grid.
  member = det.members["det"]
  images = det.preprocess(study_lib.read_study(tmp_path / "study").records())
  raw = {k: np.asarray(v) for k, v in member.jitted("predict")(member.state, {"image": images[member.plan]}).items()}
  names = ("IPH", "EDH/SDH", "SAH", "IVH")
  uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
  expected = []
  for i in range(len(p.hu)):
    for d in np.argsort(-raw["det_scores"][i], kind="stable"):
      if raw["det_classes"][i, d] >= 0 and raw["det_scores"][i, d] >= 0.1:
        expected.append((i, uids[i], names[raw["det_classes"][i, d]], list(raw["det_boxes"][i, d] * 2.0)))
  assert expected
  assert [(e["slice_index"], e["sop_uid"], e["class"], e["box"]) for e in report["detections"]] == expected
  np.testing.assert_allclose([e["z_position"] for e in report["detections"]],
                             [p.z_positions_mm[e[0]] for e in expected], atol=1e-4)
  assert report["detector"]["below_threshold"] == int(((raw["det_classes"] >= 0) & (raw["det_scores"] < 0.1)).sum())
  assert report["findings"]["subdural"]["note"].startswith("the detector's EDH/SDH class")
  # mask.nii.gz: the instance masks' label map, nearest-upsampled onto the DICOM grid; volumes per class from it.
  img = nib.load(out / "mask.nii.gz")
  assert img.shape == (128, 128, len(p.hu))
  mask = np.asarray(img.dataobj).transpose(2, 1, 0)
  np.testing.assert_array_equal(mask, np.repeat(np.repeat(raw["pred_mask"], 2, axis=1), 2, axis=2))
  assert mask.any()
  voxel_ml = 5.0 * p.pixel_spacing_mm[0] * p.pixel_spacing_mm[1] / 1000
  for name, label in (("IPH", 2), ("EDH/SDH", 1), ("SAH", 4), ("IVH", 3)):
    assert report["volumes"]["per_class"][name]["ml"] == pytest.approx(np.count_nonzero(mask == label) * voxel_ml)
  assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "report.md").read_text()
  first = report["detections"][0]
  assert "## Detections" in md and f"| {first['slice_index']} | {first['z_position']:.1f} | {first['class']} | " in md
  assert "| EDH/SDH (epidural, subdural) |" in md


def test_nifti_input_predicts_and_its_mask_keeps_the_files_shape_and_affine(runs, tmp_path):
  p = make_phantom(4)
  # Stored RAS (x to the right, y anterior) with an offset origin: the reverse of the axial L, P, S order.
  ras = np.ascontiguousarray(p.hu[:, ::-1, ::-1].transpose(2, 1, 0))
  affine = np.diag([p.pixel_spacing_mm[1], p.pixel_spacing_mm[0], 5.0, 1.0])
  affine[:3, 3] = (-100.0, -120.0, 30.0)
  nib.save(nib.Nifti1Image(ras, affine), tmp_path / "head.nii.gz")
  report = predict.predict_study(runs["pair"], tmp_path / "head.nii.gz", tmp_path / "out", OPTIONS)
  rows = _csv(tmp_path / "out" / "predictions.csv")
  assert [int(r["source_slice"]) for r in rows] == list(range(len(p.hu)))
  prob = np.array([[float(r[c]) for c in PROB_COLUMNS] for r in rows])
  np.testing.assert_allclose(prob, _eval_probabilities(runs["cls_config"], runs["cls"], p.hu), rtol=1e-5, atol=1e-6)
  img = nib.load(tmp_path / "out" / "mask.nii.gz")
  assert img.shape == ras.shape
  np.testing.assert_allclose(img.affine, affine, atol=1e-6)
  # Read back through the same reorientation as the input, the mask lies on the axial slices it was predicted on.
  stored = np.asarray(img.dataobj)
  axial = np.ascontiguousarray(stored.transpose(2, 1, 0)[:, ::-1, ::-1])
  voxel_ml = 5.0 * p.pixel_spacing_mm[0] * p.pixel_spacing_mm[1] / 1000
  assert report["volumes"]["blood"]["ml"] == pytest.approx(np.count_nonzero(axial) * voxel_ml)
  np.testing.assert_allclose([float(r["blood_ml"]) for r in rows], np.count_nonzero(axial, axis=(1, 2)) * voxel_ml)


def test_the_real_pydicom_head_slice_is_a_one_slice_study(runs, tmp_path):
  src = pathlib.Path(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))  # JPEG 2000, gantry tilt
  (tmp_path / "study").mkdir()
  shutil.copy(src, tmp_path / "study" / "IM0001")
  report = predict.predict_study(runs["cls_bundle"], tmp_path / "study", tmp_path / "out", OPTIONS)
  assert report["series"]["num_slices"] == 1 and report["series"]["matrix"] == [512, 512]
  assert "axial (tilt" in report["series"]["selection"]["reason"]
  prob = np.array([[float(r[c]) for c in PROB_COLUMNS] for r in _csv(tmp_path / "out" / "predictions.csv")])
  ds = pydicom.dcmread(src)
  np.testing.assert_allclose(prob, _eval_probabilities(runs["cls_config"], runs["cls"],
                                                       np.rint(dicom.to_hu(ds))[None].astype(np.int16)),
                             rtol=1e-5, atol=1e-6)
  assert "overview.png" in report["outputs"] and "mask.nii.gz" not in report["outputs"]
  with pytest.raises(study_lib.StudyError, match=r"study: too few slices: .* has 1, fewer than the minimum 5"):
    predict.predict_study(runs["cls_bundle"], tmp_path / "study", tmp_path / "out2",
                          predict.Options(min_slices=5, progress=False))


def test_folders_that_are_no_ct_study_fail_naming_folder_and_reason(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(study_lib.StudyError, match=r"empty: empty folder \(no files\)"):
    study_lib.read_study(tmp_path / "empty")
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("x")
  (tmp_path / "notes" / "b.bin").write_bytes(b"\x00" * 300)
  with pytest.raises(study_lib.StudyError, match=r"notes: no DICOM files among its 2 files"):
    study_lib.read_study(tmp_path / "notes")
  (tmp_path / "mr").mkdir()
  shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), tmp_path / "mr" / "1.dcm")
  with pytest.raises(study_lib.StudyError, match=r"mr: no CT series found: .*Modality MR is not CT"):
    study_lib.read_study(tmp_path / "mr")
  with pytest.raises(study_lib.StudyError, match="no such file or folder"):
    study_lib.read_study(tmp_path / "nowhere")
  # A missing slice: one gap twice the others.
  p = make_phantom(5)
  z = np.r_[p.z_positions_mm[:4], p.z_positions_mm[5:]]
  dicom.write_series(p.hu[np.r_[0:4, 5:len(p.hu)]], (5.0, *p.pixel_spacing_mm), tmp_path / "gap", z_positions=z)
  with pytest.raises(study_lib.StudyError, match=r"gap: inconsistent slice spacing .* slices 3 and 4 .* 10 mm apart"):
    study_lib.read_study(tmp_path / "gap")
  assert "10 mm apart" in study_lib.read_study(tmp_path / "gap", allow_uneven_spacing=True).notes[0]
  # Two studies in one folder: which one is meant is not guessed.
  dicom.write_series(p.hu, (5.0, *p.pixel_spacing_mm), tmp_path / "two" / "x", z_positions=p.z_positions_mm)
  dicom.write_series(p.hu, (5.0, *p.pixel_spacing_mm), tmp_path / "two" / "y", z_positions=p.z_positions_mm)
  with pytest.raises(study_lib.StudyError, match=r"two: slices of 2 studies .* --batch"):
    study_lib.read_study(tmp_path / "two")


def test_batch_mode_reports_a_broken_study_and_predicts_the_others(runs, tmp_path, capsys):
  studies = tmp_path / "studies"
  write_study(studies / "alpha", make_phantom(6, slices=18), decoys=False)
  broken = write_study(studies / "broken", make_phantom(9), decoys=False)
  broken[4].write_bytes(broken[4].read_bytes()[:-500])   # a slice cut short in transfer
  p = make_phantom(7, slices=18)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(p.hu.transpose(2, 1, 0)), np.diag([-1.8, -1.8, 5.0, 1.0])),
           studies / "gamma.nii.gz")
  code = predict.main(["--model", str(runs["root"] / "cls_bundle"), "--input", str(studies), "--output",
                       str(tmp_path / "out"), "--batch", "--batch-size", "8", "--no-progress"])
  assert code == 1  # one study failed
  summary = {r["study"]: r for r in _csv(tmp_path / "out" / "summary.csv")}
  assert list(summary) == ["alpha", "broken", "gamma"]
  assert summary["broken"]["status"] == "error" and f"{broken[4]}: " in summary["broken"]["error"]
  for name in ("alpha", "gamma"):
    assert summary[name]["status"] == "ok" and summary[name]["error"] == ""
    report = json.loads((tmp_path / "out" / name / "report.json").read_text())
    assert float(summary[name]["prob_any"]) == report["findings"]["any"]["probability"]
    assert int(summary[name]["positive_any"]) == report["findings"]["any"]["positive"]
  assert not (tmp_path / "out" / "broken").exists()
  assert "error: broken:" in capsys.readouterr().err


def test_an_incomplete_study_is_reported_incomplete_and_strict_makes_it_an_error(runs, tmp_path):
  studies = tmp_path / "studies"
  write_study(studies / "short", make_phantom(11), decoys=False)   # 45 mm of a head: slices missing at both ends
  code = predict.main(["--model", str(runs["root"] / "cls_bundle"), "--input", str(studies), "--output",
                       str(tmp_path / "out"), "--batch", "--no-progress", "--overview-slices", "0"])
  assert code == 0   # predicted, and said to be incomplete
  reason = "z coverage 45.0 mm (10 slices, 5 mm slice gap) is under the 80 mm a head needs"
  (row,) = _csv(tmp_path / "out" / "summary.csv")
  assert (row["status"], row["error"]) == ("incomplete", "")
  report = json.loads((tmp_path / "out" / "short" / "report.json").read_text())
  assert report["status"] == "incomplete" and report["completeness"]["reasons"] == [reason]
  assert float(row["prob_any"]) == report["findings"]["any"]["probability"]
  md = (tmp_path / "out" / "short" / "report.md").read_text()
  assert f"**INCOMPLETE SERIES**: slices may be missing; the findings below cover only the slices present.\n\n- {reason}" in md
  assert md.index("INCOMPLETE") < md.index("## Findings")

  code = predict.main(["--model", str(runs["root"] / "cls_bundle"), "--input", str(studies), "--output",
                       str(tmp_path / "strict"), "--batch", "--no-progress", "--overview-slices", "0", "--strict"])
  assert code == 1
  (row,) = _csv(tmp_path / "strict" / "summary.csv")
  assert row["status"] == "error" and "short: incomplete series" in row["error"] and reason in row["error"]
  assert not (tmp_path / "strict" / "short").exists()


def test_outputs_that_would_delete_inputs_run_folders_or_others_files_are_refused(runs, tmp_path, capsys):
  from ich_jax import atomic

  incoming = tmp_path / "incoming"
  files = write_study(incoming / "s42", make_phantom(11), decoys=False)
  before = {f: f.read_bytes() for f in files}
  model = str(runs["root"] / "cls_bundle")
  args = ["--model", model, "--batch-size", "8", "--no-progress"]
  # `--output` the incoming folder (it holds the study), the study itself, or inside it: refused, nothing touched.
  for out, what in ((incoming, "contains the input"), (incoming / "s42", "is the input"),
                    (incoming / "s42" / "out", "lies inside the input")):
    assert predict.main([*args, "--input", str(incoming / "s42"), "--output", str(out)]) == 1
    assert what in capsys.readouterr().err
  assert all(f.read_bytes() == b for f, b in before.items()) and not (incoming / "s42" / "out").exists()
  # A folder of someone else's files, and the bundle itself: refused.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  assert predict.main([*args, "--input", str(incoming / "s42"), "--output", str(tmp_path / "mine")]) == 1
  assert "was not written by ich-jax" in capsys.readouterr().err
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
  assert predict.main([*args, "--input", str(incoming / "s42"), "--output", model]) == 1
  assert f"is the input {pathlib.Path(model).resolve()}" in capsys.readouterr().err
  # An earlier prediction is ours: replaced whole, with the marker.
  for _ in range(2):
    assert predict.main([*args, "--input", str(incoming / "s42"), "--output", str(tmp_path / "out")]) == 0
  assert atomic.kind_of(tmp_path / "out") == "prediction" and (tmp_path / "out" / "report.json").is_file()
  # `launch.py --mode export --out <the workdir>` would replace the checkpoints: refused before reading them.
  checkpoints = sorted(p.name for p in (runs["cls"] / "checkpoints").iterdir())
  for out in (runs["cls"], runs["root"]):
    with pytest.raises(atomic.NotOurs, match="must not be replaced"):
      export.export_bundle(runs["cls_config"], runs["cls"], out)
  assert sorted(p.name for p in (runs["cls"] / "checkpoints").iterdir()) == checkpoints
  with pytest.raises(atomic.NotOurs, match="was not written by ich-jax"):
    bundle_lib.combine(tmp_path / "mine", average=[model])


def test_batch_names_are_unique_a_failed_study_loses_its_old_report_and_one_writer_at_a_time(runs, tmp_path, capsys):
  from ich_jax import atomic, lock

  studies = tmp_path / "studies"
  files = write_study(studies / "s1", make_phantom(12, slices=18), decoys=False)
  p = make_phantom(13, slices=18)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(p.hu.transpose(2, 1, 0)), np.diag([-1.8, -1.8, 5.0, 1.0])),
           studies / "s1.nii.gz")
  out = tmp_path / "out"
  rows = predict.predict_batch(runs["cls_bundle"], studies, out, OPTIONS)
  assert [(r["study"], r["status"], r["output"]) for r in rows] == [
      ("s1", "ok", str(out / "s1")), ("s1.nii.gz", "ok", str(out / "s1.nii.gz"))]
  reports = {n: json.loads((out / n / "report.json").read_text()) for n in ("s1", "s1.nii.gz")}
  assert reports["s1"]["source"] == "dicom" and reports["s1.nii.gz"]["source"] == "nifti"
  assert [r["study"] for r in _csv(out / "summary.csv")] == ["s1", "s1.nii.gz"]
  # s1's transfer breaks: this run's error, and no report of the earlier run left standing beside it.
  files[3].write_bytes(files[3].read_bytes()[:-400])
  rows = predict.predict_batch(runs["cls_bundle"], studies, out, OPTIONS)
  assert rows[0]["status"] == "error" and "earlier run wrote" in rows[0]["error"] and not (out / "s1").exists()
  assert rows[1]["status"] == "ok" and (out / "s1.nii.gz" / "report.json").is_file()
  capsys.readouterr()
  # A second batch into the same output while one runs: refused, naming this process.
  with lock.FolderLock(out):
    with pytest.raises(lock.Locked, match=f"pid {os.getpid()}"):
      predict.predict_batch(runs["cls_bundle"], studies, out, OPTIONS)
  # A batch root of someone else's files is refused before any study is written.
  (tmp_path / "theirs").mkdir()
  (tmp_path / "theirs" / "s1").mkdir()
  with pytest.raises(atomic.NotOurs):
    predict.predict_batch(runs["cls_bundle"], studies, tmp_path / "theirs", OPTIONS)
  assert list((tmp_path / "theirs").iterdir()) == [tmp_path / "theirs" / "s1"]


def test_output_names_disambiguate_collisions():
  entries = [pathlib.Path(n) for n in ("S1", "s1.nii.gz", "s2.nii", "s2.nii.gz", "s3", "summary.csv")]
  assert predict.output_names(entries) == ["S1", "s1.nii.gz", "s2.nii", "s2.nii.gz", "s3", "summary.csv-2"]


def test_a_study_too_large_for_memory_is_refused_before_its_pixels_are_read(runs, tmp_path):
  bundle = runs["cls_bundle"]
  studies = tmp_path / "studies"
  write_study(studies / "a_small", make_phantom(15, slices=18), decoys=False)
  big = write_study(studies / "b_large", make_phantom(16, slices=24), decoys=False)
  big[5].write_bytes(big[5].read_bytes()[:-2000])    # its pixels would fail to decode, were they read
  p = make_phantom(17, slices=24)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(p.hu.transpose(2, 1, 0)), np.diag([-1.8, -1.8, 5.0, 1.0])),
           studies / "c_large.nii.gz")
  small, large = (predict.study_memory_bytes(n, 128, 128, bundle) for n in (18, 24))
  # The classifier bundle: int16 HU of the study, no mask, its one plan's float32 inputs held twice.
  (plan,) = {m.plan for m in bundle.members.values()}
  assert large == 24 * 128 * 128 * 2 + 2 * 24 * plan.image_size ** 2 * len(plan.recipe) * 4 and small < large
  options = dataclasses.replace(OPTIONS, max_study_gb=(small + large) / 2 / 1e9)
  rows = predict.predict_batch(bundle, studies, tmp_path / "out", options)
  assert [r["status"] for r in rows] == ["ok", "error", "error"]
  for row, name in zip(rows[1:], ("b_large", "c_large.nii.gz")):
    assert f"{name}: too large to predict in memory: 24 slices of 128x128 need about {large / 1e9:.2f} GB" \
        in row["error"] and "refused before reading its pixels" in row["error"]


def test_a_bundle_other_than_the_pinned_one_is_refused_before_any_output(runs, tmp_path, capsys):
  """`--expect-sha256`: an edited bundle whose manifest hash was recomputed loads as a bundle, not as the pinned one."""
  src = runs["root"] / "cls_bundle"
  identity = bundle_lib.manifest_sha256(src)
  edited = edited_bundle(src, tmp_path / "edited", threshold=0.01)
  study = tmp_path / "study"
  write_study(study, make_phantom(14), decoys=False)
  assert predict.main(["--model", str(edited), "--expect-sha256", identity, "--input", str(study), "--output",
                       str(tmp_path / "out"), "--no-progress"]) == 1
  assert "is not the expected" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_overview_grad_cam_is_scaled_by_the_slices_probability():
  """A Grad-CAM normalised to its own maximum would show a 0.01 slice as hot as a positive one."""
  import types

  from ich_jax import predict as P

  cam = np.zeros((2, 8, 8), np.float32)
  cam[:, 2:4, 2:4] = 5.0                            # the same hot spot on both slices
  bundle = types.SimpleNamespace(gradcam=lambda images, rows, batch: cam[:len(rows)], threshold=0.5,
                                 predicts_subtypes=False)
  study = types.SimpleNamespace(hu=np.zeros((2, 8, 8), np.int16), z_positions=np.array([0.0, 5.0]))
  prob = np.array([[0.9] + [0.1] * 5, [0.01] + [0.0] * 5], np.float32)
  tiles, label = P._overview_tiles(study, {}, bundle, {"probabilities": prob}, [0, 1], None)
  assert [t["kind"] for t in tiles] == ["heat", "heat"] and "× slice probability" in label
  assert tiles[0]["overlay"].max() == pytest.approx(0.9) and tiles[1]["overlay"].max() == pytest.approx(0.01)
