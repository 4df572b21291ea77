"""The on-device half of the training pipeline (`config.data.preprocess_on`) against the host pipeline."""

import jax
import numpy as np
import pytest

from ich_jax.data import augment as aug
from ich_jax.data import on_device, pipeline, slice_plan, windows
from tests.data.slice_fakes import data_cfg, fake_source, take


def _finished(batch, cfg, keys=("image", "labels", "mask")):
  finish = on_device.TrainFinish(cfg)
  return {k: np.asarray(v) for k, v in jax.jit(finish)({k: batch[k] for k in finish.host_keys(keys)}).items()}


@pytest.mark.parametrize("recipe,intensity,augment,image_size", [
    (windows.RSNA_3WINDOW, "window", True, 24),
    (windows.RSNA_NEIGHBOURS, "window", True, 32),
    (windows.SEED001_5SLICE, "clip_rescale", False, 32),
])
def test_on_device_batches_match_the_host_pipeline(recipe, intensity, augment, image_size):
  src = fake_source(size=32)
  cfg = data_cfg(image_size=image_size, recipe=recipe, augment=augment, intensity=intensity)
  cfg.augment.rotation_deg = 30.0
  host = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=4), 2)
  cfg.preprocess_on = "device"
  device = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=4), 2)
  for h, d in zip(host, device):
    # The host hands over int16 HU, one plane per distinct offset, and no image.
    assert "image" not in d and d["hu"].dtype == np.int16
    assert d["hu"].shape == (8, 32, 32, len(windows.recipe_offsets(recipe)))
    assert ("warp" in d) == augment
    np.testing.assert_array_equal(d["record_index"], h["record_index"])
    np.testing.assert_array_equal(d["pixel_spacing"], h["pixel_spacing"])  # after warp scale and resize
    out = _finished(d, cfg)
    assert out["image"].shape == h["image"].shape and out["image"].dtype == np.float32
    # Same maps (same stream-keyed draws), float32 instead of float64 coordinates:
    # the fixture's pixel noise spans 2500 HU per pixel, the worst case for that.
    np.testing.assert_allclose(out["image"], h["image"], atol=3e-4 if augment else 1e-6)
    assert np.mean(out["mask"] != h["mask"]) < 1e-3   # nearest ties may round apart
    if augment:  # the maps were applied: the same HU without them look different
      plain = cfg.copy_and_resolve_references()
      plain.augment.enabled = False
      assert not np.allclose(_finished(d, plain)["image"], out["image"], atol=1e-2)


def test_right_angle_maps_and_flips_are_exact():
  rng = np.random.default_rng(0)
  hu = rng.integers(-1000, 1500, (3, 9, 9, 1)).astype(np.float32)
  mask = rng.integers(0, 6, (3, 9, 9)).astype(np.uint8)
  params = [aug.AffineParams(rotation_deg=90.0), aug.AffineParams(hflip=True), aug.AffineParams()]
  warp = np.stack([aug.source_terms(aug.affine_matrix(p, (9, 9)), (9, 9)) for p in params])
  got = np.asarray(jax.jit(on_device.warp_linear)(hu, warp))
  got_mask = np.asarray(jax.jit(on_device.warp_nearest)(mask, warp))
  for k, want in enumerate((np.rot90, np.fliplr, lambda a: a)):
    np.testing.assert_array_equal(got[k, ..., 0], want(hu[k, ..., 0]))
    np.testing.assert_array_equal(got_mask[k], want(mask[k]))
  np.testing.assert_array_equal(aug.source_terms(None, (2, 3)), [[0, 1, 0, 0, 0], [0, 0, 0, 1, 2]])


def test_host_keys_replace_the_image_only():
  cfg = data_cfg(preprocess_on="device")
  assert on_device.TrainFinish(cfg).host_keys(("image", "labels", "mask")) == ("hu", "warp", "labels", "mask")
  cfg.augment.enabled = False
  assert on_device.TrainFinish(cfg).host_keys(("image", "labels")) == ("hu", "labels")


def test_auto_keeps_the_host_pipeline_on_cpu_and_bad_values_are_named():
  assert jax.default_backend() == "cpu"
  cfg = data_cfg()
  assert cfg.preprocess_on == "auto" and not slice_plan.from_config(cfg).on_device
  cfg.preprocess_on = "gpu"
  with pytest.raises(ValueError, match="data.preprocess_on='gpu'"):
    slice_plan.from_config(cfg)
