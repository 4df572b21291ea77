"""A run folder's bundle: seed 003's cascade exported as one bundle, its input runs brought along as members; seed
001's detector exported with its classes, boxes and instance-mask label map."""
import shutil

import jax
import numpy as np

from ich_jax import bundle as bundle_lib
from ich_jax.bundle import export
from ich_jax.bundle import format as bundle_format
from ich_jax.data import series_index
from ich_jax.train import config_record, loop
from tests.fake_runs import make_phantom, make_run


def test_seed003_cascade_exports_as_one_bundle_and_predicts_as_its_stages_were_trained(runs, tmp_path):
  """CNN → seq_gru_1 (its features) → seq_gru_2 (both stages' probabilities and the slice gap): export_bundle
  brings the input runs along; the bundle's answer equals each stage evaluated on the previous stage's export
  (ich_jax.data.stage_exports), the path the sequence models train and evaluate on."""
  from configs import sequence as sequence_config
  from ich_jax.data import stage_exports

  p = make_phantom(10)
  n = len(p.hu)
  records = [{"image": p.hu[i], "series_id": b"phantom", "study_id": b"phantom", "slice_index": i,
              "z_position": np.float32(p.z_positions_mm[i]), "labels": np.zeros(6, np.float32)} for i in range(n)]
  source = series_index.SeriesSource(records)

  def export_stage(config, workdir):
    exp, state, _ = loop.restore_for_eval(config, workdir)
    split_source = source if config.dataset.get("kind", "slices") == "slices" else \
        stage_exports.SeriesFeatureSource(config.dataset.exports, "train")
    rows = loop.predict_split(exp, state, split_source, batch_size=8, method="export",
                              fields=stage_exports.ID_FIELDS + stage_exports.EXTRA_FIELDS)
    stage_exports.write_export(stage_exports.export_dir(workdir, "train"), rows)
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
      make_run(config, tmp_path / name, 2)
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
  # Each member carries its own run's provenance: the CNN its TFDS build, seq_gru_2 the exports it read.
  prov = bundle_format.provenance_of(cascade.manifest)["members"]
  assert prov["cascade_cls"]["dataset"]["version"] == "1.2.0" and prov["seq_gru_2"]["dataset"]["version"] is None
  assert prov["seq_gru_2"]["dataset"]["exports"] == [str(cls), str(tmp_path / "seq_gru_1")]
  assert prov["seq_gru_2"]["config_hash"] == config_record.config_hash(configs["seq_gru_2"])
  assert (f"  seq_gru_2: dataset synthetic_ich/{configs['seq_gru_2'].dataset.config}, the exports of 2 run(s); "
          "splits: train 'train', eval 'test'") in bundle_format.describe_provenance(cascade.manifest)
  got = cascade.predict(cascade.preprocess(records), p.z_positions_mm, batch_size=8)
  np.testing.assert_allclose(got["probabilities"], stage, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got["members"]["seq_gru_1"]["probabilities"], got["probabilities"], atol=1e-3)


def _phantom_records(p):
  # The detection task's evaluation input carries instance targets (data.instances): an empty mask gives none.
  return [{"image": p.hu[i], "mask": np.zeros(p.hu[i].shape, np.uint8), "series_id": b"s", "study_id": b"s",
           "slice_index": i} for i in range(len(p.hu))]


def test_a_detection_run_exports_a_bundle_that_detects_as_its_checkpoint_evaluates(detection_run):
  from ich_jax.train.detection import PAPER_CLASSES

  det = detection_run["bundle"]
  assert [(m["name"], m["role"], m["model"], m["image_size"], m["classes"]) for m in det.describe()] == [
      ("det", "detector", "hybrid_maskrcnn", 64, [list(g) for g in PAPER_CLASSES])]
  assert det.outputs == {"probabilities": {"combine": "mean", "members": ["det"]}, "mask": "det", "gradcam": None,
                         "detections": "det"}
  assert det.has_mask and det.mask_subtypes and det.predicts_subtypes and det.threshold == 0.1
  assert det.mask_classes == PAPER_CLASSES and det.detector.task.classes == PAPER_CLASSES
  # Everything the task predicts, equal to the checkpoint's predictions through the evaluation loop.
  p = make_phantom(20)
  records = _phantom_records(p)
  exp, state, _ = loop.restore_for_eval(detection_run["config"], detection_run["run"])
  expected = loop.predict_split(exp, state, series_index.SeriesSource(records), batch_size=16)
  got = det.predict(det.preprocess(records), p.z_positions_mm, batch_size=8)
  for key in ("probabilities", "pred_mask", "det_boxes", "det_scores", "det_classes"):
    np.testing.assert_array_equal(got["members"]["det"][key], expected[key], err_msg=key)
  d = got["detections"]
  assert d["input_shape"] == (64, 64)
  np.testing.assert_array_equal(d["boxes"], expected["det_boxes"])
  np.testing.assert_array_equal(d["scores"], expected["det_scores"])
  np.testing.assert_array_equal(d["classes"], expected["det_classes"])
  np.testing.assert_array_equal(got["pred_mask"], expected["pred_mask"])
  # Untrained at a 0.1 threshold (tests/conftest.py): boxes to list and masks pasted, so what follows checks content.
  assert (d["scores"] >= det.threshold).any() and got["pred_mask"].any()


def test_member_names_are_the_shortest_distinct_tail_of_their_run_folders():
  import pathlib

  runs = [pathlib.Path(p) for p in ("/w/densenet121/cnn_fold0", "/w/densenet169/cnn_fold0", "/w/densenet121/cnn",
                                    "/w/ensemble", "/x/a b/cnn", "/y/a_b/cnn")]
  assert list(export.member_names(runs).values()) == [
      "densenet121.cnn_fold0", "densenet169.cnn_fold0", "densenet121.cnn", "ensemble", "a_b.cnn", "a_b.cnn-2"]


def test_a_host_step_without_a_mean_record_and_a_bad_record_are_refused_naming_file_and_field(tmp_path):
  """A seed 003 combined stage finished before it recorded its parts (stage.json, no combined.json): the error
  says how to get the record; a record with no parts names the file and the field."""
  import json

  import pytest

  from ich_jax.experiments import rsna_cascade

  stage = tmp_path / "densenet121" / "seq1"
  stage.mkdir(parents=True)
  (stage / "stage.json").write_text(json.dumps({"name": "densenet121/seq1", "status": "done"}))
  with pytest.raises(FileNotFoundError, match="neither config.json nor combined.json.*delete its stage.json"):
    export.export_bundle(None, stage, tmp_path / "bundle")
  (stage / rsna_cascade.MEAN_RECORD).write_text(json.dumps({"combine": "mean", "parts": [], "threshold": 0.5}))
  with pytest.raises(ValueError, match=f"{stage / 'combined.json'}: expected combine .* parts=\\[\\]"):
    export.export_bundle(None, stage, tmp_path / "bundle")
  rsna_cascade.write_mean_record(stage, [tmp_path / "densenet121" / "seq1_fold0"], 0.25)
  assert rsna_cascade.read_mean_record(stage) == {"parts": [tmp_path / "densenet121" / "seq1_fold0"],
                                                  "threshold": 0.25}
