"""A slice record's channels: clip-rescale with neighbour slices past the series' edge."""

import numpy as np

from ich_jax.data import pipeline, windows
from tests.data.slice_fakes import data_cfg, fake_source


def test_clip_rescale_intensity():
  src = fake_source(constant=True)
  cfg = data_cfg(recipe=windows.SEED001_5SLICE, augment=False, intensity="clip_rescale")
  b = next(iter(pipeline.eval_batches(src, cfg, batch_size=len(src))))
  i = int(np.flatnonzero((b["series_id"] == b"1.2.3.0") & (b["slice_index"] == 0))[0])
  # Series 0 slices hold 0, 10, 20, ... HU; s-2, s-1 repeat slice 0 -> 0 HU -> 0.
  np.testing.assert_allclose(b["image"][i, 0, 0], [0, 0, 0, 10 / 80, 20 / 80], atol=1e-6)
