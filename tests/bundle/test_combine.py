"""Ensembles of bundles: two classifiers averaged, member by member, loaded from the bundle alone; a detector's
mask and boxes beside a classifier's probabilities."""
import numpy as np
import pytest

from ich_jax import bundle as bundle_lib
from tests.fake_runs import make_phantom


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
  p = make_phantom(8)
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


def test_a_detector_bundle_gives_a_combined_bundle_its_mask_and_boxes(runs, detection_run, tmp_path):
  from ich_jax.bundle import format as bundle_format

  bundle_lib.combine(tmp_path / "both", average=[runs["root"] / "cls_bundle"], mask=detection_run["bundle"].directory,
                     threshold=0.5)
  both = bundle_lib.load(tmp_path / "both")
  assert both.outputs == {"probabilities": {"combine": "mean", "members": ["0.cls"]}, "mask": "1.det",
                          "gradcam": "0.cls", "detections": "1.det"}
  assert both.mask_subtypes and both.mask_classes == detection_run["bundle"].mask_classes
  with pytest.raises(bundle_lib.BundleError, match="outputs.detections='0.cls' is not a detector member"):
    bundle_format.check_outputs(both.manifest["members"], {**both.outputs, "detections": "0.cls"})
