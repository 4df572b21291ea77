"""Windows of slices for seed 002's patch U-Net: the grid, blood-free windows undersampled, crops that match
the whole slice's pixels and mask."""
import numpy as np
from ml_collections import ConfigDict

from ich_jax.data import config_defaults, patches, series_index, slice_inputs, slice_plan


def _records(n=4, size=32):
  rng = np.random.default_rng(0)
  out = []
  for k in range(n):
    mask = np.zeros((size, size), np.uint8)
    if k < 3:
      r, c = rng.integers(0, size - 4, 2)
      mask[r:r + 4, c:c + 3] = 5
    image = rng.normal(30, 10, (size, size)).astype(np.int16)
    out.append({"image": image, "mask": mask, "labels": np.float32([k < 3] * 6), "series_id": b"s",
                "slice_index": np.int32(k), "pixel_spacing": np.float32([1.0, 1.0])})
  return out


def _cfg(augment=False):
  cfg = config_defaults.default_data_config()
  cfg.image_size = 32
  cfg.recipe = [[0, 40, 120]]
  cfg.augment.enabled = augment
  cfg.read_threads = 1
  cfg.patch = ConfigDict({"size": 16, "stride": 8, "negative_ratio": 1.0, "redraw_each_epoch": False})
  return cfg


def test_blood_windows_and_the_undersampled_epoch():
  records, cfg = _records(), _cfg()
  origins = patches.grid(cfg)
  assert origins == [(y, x) for y in (0, 8, 16) for x in (0, 8, 16)]
  blood = patches.blood_windows(records, cfg)
  for i, rec in enumerate(records):
    for j, (y, x) in enumerate(origins):
      assert blood[i, j] == rec["mask"][y:y + 16, x:x + 16].any()
  sampler = patches.window_sampler(records, cfg, seed=0)
  epoch = sampler.records(0)
  # Every window with blood once, and as many without blood, distinct.
  assert sampler.length == 2 * blood.sum() and len(set(epoch.tolist())) == len(epoch)
  assert blood.ravel()[epoch].sum() == blood.sum()
  np.testing.assert_array_equal(sampler.records(5), epoch)        # drawn once, as seed 002 (no redraw)


def test_training_windows_are_crops_of_the_preprocessed_slice():
  records, cfg = _records(), _cfg()
  batch = next(patches.train_iterator(records, cfg, global_batch_size=6, seed=0))
  assert batch["image"].shape == (6, 16, 16, 1) and batch["mask"].shape == (6, 16, 16)
  src = series_index.as_series_source(records)
  for i in range(6):
    whole = slice_inputs.load(src, slice_plan.from_config(cfg), int(batch["record_index"][i]))
    y, x = batch["patch_origin"][i]
    np.testing.assert_array_equal(batch["image"][i], whole["image"][y:y + 16, x:x + 16])
    np.testing.assert_array_equal(batch["mask"][i], whole["mask"][y:y + 16, x:x + 16])
  assert batch["mask"].reshape(6, -1).any(1).sum() >= 1
  # Augmented windows keep their shape and warp image and mask together.
  aug = next(patches.train_iterator(records, _cfg(augment=True), global_batch_size=6, seed=0))
  assert aug["image"].shape == (6, 16, 16, 1) and not np.array_equal(aug["image"], batch["image"])
