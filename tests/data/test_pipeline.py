"""The slice pipeline end to end over in-memory fake slice sources (no TFDS, no download)."""

import numpy as np

from ich_jax.data import pipeline, windows
from tests.data.slice_fakes import assert_batches_equal, data_cfg, fake_source


def test_batch_fields_and_types():
  # TFDS hands scalar features back as Python int/float/bytes; batches keep the schema dtypes.
  src = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
         for r in fake_source()]
  assert isinstance(src[0]["slice_index"], int) and isinstance(src[0]["z_position"], float)
  it = pipeline.train_iterator(src, data_cfg(), global_batch_size=4, seed=0)
  b = next(it)
  assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
  assert b["labels"].shape == (4, 6) and b["labels"].dtype == np.float32
  assert b["mask"].shape == (4, 16, 16) and b["mask"].dtype == np.uint8
  assert b["series_id"].dtype.kind == "S" and b["slice_index"].dtype == np.int32
  assert b["pixel_spacing"].shape == (4, 2) and b["record_index"].shape == (4,)
  assert b["z_position"].dtype == np.float32 and b["mimic"].dtype == np.uint8
  assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0


def test_pipeline_resizes_to_image_size():
  b = next(pipeline.train_iterator(fake_source(), data_cfg(image_size=8), global_batch_size=2, seed=0))
  assert b["image"].shape == (2, 8, 8, 3) and b["mask"].shape == (2, 8, 8)
  np.testing.assert_allclose(b["pixel_spacing"][:, 0] * b["image"].shape[1], 8.0, rtol=0.25)


def test_eval_batches_are_unaugmented_and_repeatable():
  src = fake_source()
  cfg = data_cfg(augment=True)
  ds = pipeline.eval_batches(src, cfg, batch_size=8)
  first, second = list(ds), list(ds)
  assert_batches_equal(first, second)
  b = first[0]
  rec = src[int(b["record_index"][0])]
  np.testing.assert_allclose(b["image"][0], windows.apply_recipe({0: rec["image"]}, windows.RSNA_3WINDOW))
  np.testing.assert_array_equal(b["mask"][0], rec["mask"])
