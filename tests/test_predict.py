"""Export → bundle → predict on studies as a scanner writes them: phantom DICOM with decoy series, NIfTI, a
real head slice, broken folders, batch mode, tampered bundles, ensembles of bundles."""
import csv
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import nibabel as nib
import numpy as np
import pydicom
import pytest

from configs import quickstart, segmentation as seg_config
from ich_jax import bundle as bundle_lib
from ich_jax import predict
from ich_jax.data import dicom, phantom, pipeline, study as study_lib
from ich_jax.eval import metrics as M
from ich_jax.eval.prediction_files import PROB_COLUMNS
from ich_jax.train import checkpoint, export, loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 128² phantoms at ~1.8 mm pixels, 5 mm slices: about ten slices, a bleed in each study.
SPEC = phantom.PhantomSpec(matrix=128, pixel_spacing_mm=(1.7, 1.9), slice_thickness_mm=(5.0,), max_slices=10,
                           p_hemorrhage=1.0)
OPTIONS = predict.Options(batch_size=8, progress=False)


def _phantom(seed, slices=10):
  """10 slices cover 45 mm, less than a head (the study is incomplete); 18 cover 85 mm."""
  return phantom.make_phantom(seed, dataclasses.replace(SPEC, max_slices=slices))


def _write_study(folder, p, *, decoys=True, **kw):
  """The phantom's soft-tissue axial series (random file names, nested), plus a bone-kernel twin and a sagittal
  reformat of the same study, and a stray text file: what a scanner folder holds."""
  study_uid = pydicom.uid.generate_uid(entropy_srcs=[str(folder)])
  spacing = (p.slice_thickness_mm, *p.pixel_spacing_mm)
  files = dicom.write_series(p.hu, spacing, folder / "a" / "b", study_uid=study_uid, file_names="random", rng=0,
                             z_positions=p.z_positions_mm, **kw)
  if decoys:
    dicom.write_series(p.hu, spacing, folder / "bone", study_uid=study_uid, kernel="BONE", series_number=2,
                       series_description="HEAD BONE", z_positions=p.z_positions_mm)
    sagittal = np.ascontiguousarray(p.hu[:, :, ::8].transpose(2, 1, 0))
    dicom.write_series(sagittal, (8 * p.pixel_spacing_mm[1], 5.0, p.pixel_spacing_mm[0]), folder / "sag",
                       study_uid=study_uid, orientation=(0, 1, 0, 0, 0, -1), series_number=3,
                       series_description="SAG MPR")
  (folder / "README.txt").write_text("exported by a PACS")
  return files


def _run(config, workdir, seed):
  """A run's workdir as training leaves it (config.json, an Orbax checkpoint through the training
  Checkpointer), holding initial weights with BatchNorm statistics drawn away from 0/1: training adds nothing
  these tests check, and statistics a bundle forgot or applied in train mode would change every output."""
  exp = loop.make_experiment(config)
  state = exp.init_state()
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if name.endswith("mean/value"):
      return x + rng.normal(0, 0.2, x.shape).astype(x.dtype)
    if name.endswith("var/value"):
      return x * rng.uniform(0.5, 2.0, x.shape).astype(x.dtype)
    return x

  state["model_state"] = jax.tree_util.tree_map_with_path(perturb, state["model_state"])
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
  ckpt.save(1, state)
  ckpt.close()


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
  """A classifier run (quickstart smoke) exported through launch.py; a U-Net run exported by export_bundle;
  and the pair combined: probabilities from the classifier, the mask from the U-Net."""
  root = tmp_path_factory.mktemp("runs")
  cls = quickstart.get_config("smoke")
  cls.dataset.data_dir = tiny_data_dir
  seg = seg_config.get_config("unet:smoke")
  seg.dataset.data_dir = tiny_data_dir
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")   # eager init is a fifth as slow (tests/train/test_segmentation)
  try:
    _run(cls, root / "cls", 0)
    _run(seg, root / "seg", 1)
  finally:
    jax.config.update("jax_default_prng_impl", old)
  run = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", "configs/quickstart.py:smoke",
                        f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={root / 'cls'}", "--mode=export",
                        f"--out={root / 'cls_bundle'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Exported bundle (1 member: cls)" in run.stdout
  export.export_bundle(seg, root / "seg")
  bundle_lib.combine(root / "pair", average=[root / "cls_bundle"], mask=root / "seg" / "bundle")
  return {"cls_config": cls, "cls": root / "cls", "cls_bundle": bundle_lib.load(root / "cls_bundle"),
          "pair": bundle_lib.load(root / "pair"), "root": root}


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _eval_probabilities(config, workdir, hu):
  """What `launch.py --mode eval` computes for these HU slices: the checkpoint through the eval loop."""
  exp, state, _ = loop.restore_for_eval(config, workdir)
  records = [{"image": hu[i], "series_id": b"s", "study_id": b"s", "slice_index": i} for i in range(len(hu))]
  preds = loop.predict_split(exp, state, pipeline.SeriesSource(records), batch_size=config.eval.batch_size)
  return preds["probabilities"]


def test_dicom_folder_with_decoys_gives_the_checkpoints_eval_probabilities_and_a_mask_on_its_grid(runs, tmp_path):
  p = _phantom(3)
  files = _write_study(tmp_path / "study", p)
  report = predict.predict_study(runs["pair"], tmp_path / "study", tmp_path / "out", OPTIONS)
  out = tmp_path / "out"
  assert sorted(f.name for f in out.iterdir()) == [".ich-jax-output.json", "mask.nii.gz", "overview.png",
                                                  "predictions.csv", "report.json", "report.md"]
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
  assert report["volumes"]["blood"]["size_bin"] == M.size_bin(report["volumes"]["blood"]["ml"])
  assert [float(r["blood_ml"]) for r in rows] == pytest.approx(list(np.count_nonzero(mask, axis=(1, 2)) * voxel_ml))
  assert set(report["timings"]) >= {"read_s", "preprocess_s", "model_s", "write_s", "total_s"}
  assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "report.md").read_text()
  assert "HEAD NONCON" in md and "Rejected" in md and "ABC/2" in md


def test_nifti_input_predicts_and_its_mask_keeps_the_files_shape_and_affine(runs, tmp_path):
  p = _phantom(4)
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
  p = _phantom(5)
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
  _write_study(studies / "alpha", _phantom(6, slices=18), decoys=False)
  broken = _write_study(studies / "broken", _phantom(9), decoys=False)
  broken[4].write_bytes(broken[4].read_bytes()[:-500])   # a slice cut short in transfer
  p = _phantom(7, slices=18)
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
  _write_study(studies / "short", _phantom(11), decoys=False)   # 45 mm of a head: slices missing at both ends
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


def test_tampered_or_incomplete_bundles_are_refused(runs, tmp_path):
  src = runs["root"] / "cls_bundle"
  params = next((src / "params").glob("*.npz")).relative_to(src)
  bad = tmp_path / "bytes"
  shutil.copytree(src, bad)
  data = bytearray((bad / params).read_bytes())
  data[-200] ^= 0xFF
  (bad / params).write_bytes(bytes(data))
  with pytest.raises(bundle_lib.BundleError, match=f"{params.name}: SHA-256 differs"):
    bundle_lib.load(bad)
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  manifest = json.loads((edited / "manifest.json").read_text())
  manifest["threshold"] = 0.01
  (edited / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(bundle_lib.BundleError, match="manifest's hash does not match"):
    bundle_lib.load(edited)
  partial = tmp_path / "partial"
  shutil.copytree(src, partial)
  (partial / params).unlink()
  with pytest.raises(bundle_lib.BundleError, match=f"{params} is missing"):
    bundle_lib.load(partial)
  with pytest.raises(bundle_lib.BundleError, match="not a model bundle"):
    bundle_lib.load(tmp_path)
  assert bundle_lib.main(["verify", str(src)]) == 0 and bundle_lib.main(["verify", str(bad)]) == 1


def test_combined_bundle_averages_its_classifiers(runs, tmp_path):
  """A second classifier (the first's weights, head changed) and their average, as `combine` makes it."""
  src = runs["root"] / "cls_bundle"
  manifest = bundle_lib.read_manifest(src)
  entry = manifest["members"][0]
  with np.load(src / entry["params"]) as z:
    arrays = {k: z[k] for k in z.files}
  head = [k for k in arrays if k.startswith("params/head/")]
  assert head
  for k in head:
    arrays[k] = arrays[k] * -0.5
  bundle_lib.write(tmp_path / "other", [(entry, arrays)], manifest["outputs"], threshold=manifest["threshold"])
  bundle_lib.combine(tmp_path / "mean", average=[src, tmp_path / "other"])
  mean = bundle_lib.load(tmp_path / "mean")
  assert [m["role"] for m in mean.describe()] == ["classifier", "classifier"]
  p = _phantom(8)
  records = [{"image": p.hu[i], "series_id": "s", "slice_index": i} for i in range(len(p.hu))]
  z = p.z_positions_mm
  images = mean.preprocess(records)
  # Loading needs the bundle alone: not the run's workdir, not its config.
  hidden = runs["cls"].with_name("hidden")
  runs["cls"].rename(hidden)
  try:
    got = bundle_lib.load(tmp_path / "mean").predict(images, z, batch_size=8)
  finally:
    hidden.rename(runs["cls"])
  one = runs["cls_bundle"].predict(runs["cls_bundle"].preprocess(records), z, batch_size=8)["probabilities"]
  first, second = mean.outputs["probabilities"]["members"]
  other = got["members"][second]["probabilities"]
  assert not np.allclose(one, other, atol=1e-3)
  np.testing.assert_allclose(got["members"][first]["probabilities"], one, rtol=1e-6)
  np.testing.assert_allclose(got["probabilities"], (one + other) / 2, rtol=1e-6)
  with pytest.raises(bundle_lib.BundleError, match="predicts no mask"):
    bundle_lib.combine(tmp_path / "x", average=[src], mask=src)


def test_seed003_cascade_exports_as_one_bundle_and_predicts_as_its_stages_were_trained(runs, tmp_path):
  """CNN → seq_gru_1 (its features) → seq_gru_2 (both stages' probabilities and the slice gap): export_bundle
  brings the input runs along; the bundle's answer equals each stage evaluated on the previous stage's export
  (ich_jax.data.series), the path the sequence models train and evaluate on."""
  from configs import sequence as sequence_config
  from ich_jax.data import series

  p = _phantom(10)
  n = len(p.hu)
  records = [{"image": p.hu[i], "series_id": b"phantom", "study_id": b"phantom", "slice_index": i,
              "z_position": np.float32(p.z_positions_mm[i]), "labels": np.zeros(6, np.float32)} for i in range(n)]
  source = pipeline.SeriesSource(records)

  def export_stage(config, workdir):
    exp, state, _ = loop.restore_for_eval(config, workdir)
    split_source = source if config.dataset.get("kind", "slices") == "slices" else \
        series.SeriesFeatureSource(config.dataset.exports, "train")
    rows = loop.predict_split(exp, state, split_source, batch_size=8, method="export",
                              fields=series.ID_FIELDS + series.EXTRA_FIELDS)
    series.write_export(series.export_dir(workdir, "train"), rows)
    return rows["probabilities"]

  # The stage-1 run's export of this one series is the "training split" the sequence runs were built on.
  cls = runs["root"] / "cascade_cls"
  shutil.copytree(runs["cls"], cls, ignore=shutil.ignore_patterns("bundle"))
  export_stage(runs["cls_config"], cls)
  configs = {}
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    for name, exports in (("seq_gru_1", (cls,)), ("seq_gru_2", (cls, tmp_path / "seq_gru_1"))):
      config = sequence_config.get_config(f"{name},smoke")
      config.dataset.exports = tuple(str(e) for e in exports)
      _run(config, tmp_path / name, 2)
      configs[name] = config
      stage = export_stage(config, tmp_path / name)
  finally:
    jax.config.update("jax_default_prng_impl", old)
  export.export_bundle(configs["seq_gru_2"], tmp_path / "seq_gru_2", tmp_path / "bundle")
  cascade = bundle_lib.load(tmp_path / "bundle")
  assert [(m["name"], m["role"], m["inputs"]) for m in cascade.describe()] == [
      ("cascade_cls", "classifier", []), ("seq_gru_1", "sequence", ["cascade_cls"]),
      ("seq_gru_2", "sequence", ["cascade_cls", "seq_gru_1"])]
  assert cascade.outputs["probabilities"]["members"] == ["seq_gru_2"] and cascade.outputs["gradcam"] == "cascade_cls"
  got = cascade.predict(cascade.preprocess(records), p.z_positions_mm, batch_size=8)
  np.testing.assert_allclose(got["probabilities"], stage, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got["members"]["seq_gru_1"]["probabilities"], got["probabilities"], atol=1e-3)


def test_outputs_that_would_delete_inputs_run_folders_or_others_files_are_refused(runs, tmp_path, capsys):
  from ich_jax import atomic

  incoming = tmp_path / "incoming"
  files = _write_study(incoming / "s42", _phantom(11), decoys=False)
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
  files = _write_study(studies / "s1", _phantom(12, slices=18), decoys=False)
  p = _phantom(13, slices=18)
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


def test_every_loaded_file_is_listed_and_the_bundle_identity_can_be_pinned(runs, tmp_path, capsys):
  src = runs["root"] / "cls_bundle"
  identity = bundle_lib.manifest_sha256(src)
  assert bundle_lib.main(["verify", str(src)]) == 0
  assert f"sha256 {identity}" in capsys.readouterr().out
  assert runs["cls_bundle"].hash == identity
  # An edit that recomputes the manifest's internal hash loads as a bundle, but not as the verified one.
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  manifest = json.loads((edited / "manifest.json").read_text())
  manifest["threshold"] = 0.01
  manifest["hash"] = bundle_lib._manifest_hash(manifest)
  (edited / "manifest.json").write_text(json.dumps(manifest))
  assert bundle_lib.read_manifest(edited)["threshold"] == 0.01
  with pytest.raises(bundle_lib.BundleError, match=f"is not the expected {identity}"):
    bundle_lib.load(edited, expected_sha256=identity)
  assert bundle_lib.main(["verify", str(edited), "--expect-sha256", identity]) == 1
  study = tmp_path / "study"
  _write_study(study, _phantom(14), decoys=False)
  assert predict.main(["--model", str(edited), "--expect-sha256", identity, "--input", str(study), "--output",
                       str(tmp_path / "out"), "--no-progress"]) == 1
  assert "is not the expected" in capsys.readouterr().err and not (tmp_path / "out").exists()
  # A member whose params file the manifest does not list with a hash: refused, even if consistent otherwise.
  unlisted = tmp_path / "unlisted"
  shutil.copytree(src, unlisted)
  manifest = json.loads((unlisted / "manifest.json").read_text())
  params = manifest["members"][0]["params"]
  del manifest["files"][params]
  manifest["hash"] = bundle_lib._manifest_hash(manifest)
  (unlisted / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(bundle_lib.BundleError, match=f"loads '{params}', which the manifest's `files` does not list"):
    bundle_lib.load(unlisted)


def test_a_study_too_large_for_memory_is_refused_before_its_pixels_are_read(runs, tmp_path):
  bundle = runs["cls_bundle"]
  studies = tmp_path / "studies"
  _write_study(studies / "a_small", _phantom(15, slices=18), decoys=False)
  big = _write_study(studies / "b_large", _phantom(16, slices=24), decoys=False)
  big[5].write_bytes(big[5].read_bytes()[:-2000])    # its pixels would fail to decode, were they read
  p = _phantom(17, slices=24)
  nib.save(nib.Nifti1Image(np.ascontiguousarray(p.hu.transpose(2, 1, 0)), np.diag([-1.8, -1.8, 5.0, 1.0])),
           studies / "c_large.nii.gz")
  small, large = (predict.study_memory_bytes(n, 128, 128, bundle) for n in (18, 24))
  assert small < large
  options = dataclasses.replace(OPTIONS, max_study_gb=(small + large) / 2 / 1e9)
  rows = predict.predict_batch(bundle, studies, tmp_path / "out", options)
  assert [r["status"] for r in rows] == ["ok", "error", "error"]
  for row, name in zip(rows[1:], ("b_large", "c_large.nii.gz")):
    assert f"{name}: too large to predict in memory: 24 slices of 128x128 need about {large / 1e9:.2f} GB" \
        in row["error"] and "refused before reading its pixels" in row["error"]
