"""The (series_id, slice_index) index: neighbours in a shuffled source, duplicates, built only when needed."""

import numpy as np
import pytest

from ich_jax.data import pipeline, series_index
from tests.data.slice_fakes import LENGTHS, data_cfg, fake_source


def test_neighbour_recipe_reads_the_right_slices_in_shuffled_source():
  # Series 2 has slice 3 missing: its neighbours fall back to the nearest slice.
  src = fake_source(constant=True, gaps={(2, 3)})
  recipe = ((-1, 500, 1000), (0, 500, 1000), (1, 500, 1000))  # [0, 1000] HU -> [0, 1]
  batches = list(pipeline.eval_batches(src, data_cfg(recipe=recipe, augment=False), batch_size=8))
  seen = 0
  for b in batches:
    for row in range(len(b["valid"])):
      if not b["valid"][row]:
        continue
      seen += 1
      k = int(b["series_id"][row].split(b".")[-1])
      s = int(b["slice_index"][row])
      present = [t for t in range(LENGTHS[k]) if (k, t) != (2, 3)]
      want = [min(present, key=lambda t: (abs(t - (s + o)), abs(t - s))) for o in (-1, 0, 1)]
      np.testing.assert_allclose(b["image"][row, 0, 0], [(100 * k + 10 * t) / 1000 for t in want], rtol=1e-6)
  assert seen == len(src)


def test_duplicate_slice_is_an_error_naming_it():
  src = fake_source()
  dup = dict(src[0])
  src.append(dup)
  with pytest.raises(ValueError, match=f"slice_index={int(dup['slice_index'])}"):
    series_index.SeriesSource(src).index


def test_index_is_not_built_for_single_slice_recipes():
  class CountingSource(list):
    reads = 0

    def __getitem__(self, i):
      CountingSource.reads += 1
      return super().__getitem__(i)

  src = CountingSource(fake_source())
  wrapped = series_index.SeriesSource(src)
  next(iter(pipeline.eval_batches(wrapped, data_cfg(augment=False), batch_size=4)))
  assert wrapped._index is None
  assert CountingSource.reads < len(src)
