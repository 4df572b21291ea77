"""Whole-batch `batch_fn`s: the batches of per-element grain maps, bit for bit."""

import functools

import grain
import numpy as np
import pytest

from ich_jax.data import augment, batching, pipeline, series_index, slice_inputs, slice_plan, streams, windows
from tests.data.slice_fakes import assert_batches_equal, data_cfg, fake_source, take


def test_stream_rng_is_grains_random_map_generator():
  seed = streams.derived_seed(3, 1)
  grain_draws = grain.MapDataset.range(40).shuffle(seed=1).random_map(lambda x, rng: rng.random(3), seed=seed)
  ours = batching.StreamRng(seed)
  for position in (0, 1, 39, 17, 17):
    np.testing.assert_array_equal(ours.at(position).random(3), grain_draws[position])


def _draw_warp(plan, example, rng):
  """One example's map as the per-example augment functions draw it (what `slice_inputs.draw_warps` does per batch)."""
  shape = example["image"].shape
  matrix = augment.random_matrix(rng, plan.augment, shape)
  out = dict(example, warp=augment.source_terms(matrix, shape))
  if matrix is not None:
    out["pixel_spacing"] = augment.warped_spacing(example["pixel_spacing"], matrix)
  return out


def _read(source, plan, index):
  return slice_inputs.read_example(source, index, plan.offsets)


def _per_element_batches(src, cfg, **kw):
  """The training stream as per-element grain maps (read, random_map augmentation, hu_example, batch)."""
  src, plan = series_index.as_series_source(src), slice_plan.from_config(cfg)

  def to_examples(ds):
    ds = ds.map(functools.partial(_read, src, plan))
    augment_fn = _draw_warp if plan.on_device else slice_inputs.augment_hu
    ds = ds.random_map(functools.partial(augment_fn, plan), seed=streams.derived_seed(kw["seed"], 1))
    return ds.map(functools.partial(slice_inputs.hu_example, cfg=plan))

  return iter(streams.train_batches(len(src), to_examples, cfg, **kw,
                                    batch_fn=None if plan.on_device else batching.HostBatch(plan)))


@pytest.mark.parametrize("recipe,on_device,process_count", [(windows.RSNA_3WINDOW, False, 1),
                                                            (windows.RSNA_NEIGHBOURS, False, 2),
                                                            (windows.RSNA_NEIGHBOURS, True, 2)])
def test_batches_are_those_of_per_element_grain_maps(recipe, on_device, process_count):
  # TrainBatch reads and augments a whole batch per grain element; the batches must not change.
  cfg = data_cfg(recipe=recipe, augment=True, preprocess_on="device" if on_device else "host")
  cfg.augment.rotation_deg = 30.0
  cfg.augment.vflip = True
  src = fake_source()
  for p in range(process_count):
    kw = dict(global_batch_size=8, seed=3, process_index=p, process_count=process_count)
    got = take(pipeline.train_iterator(src, cfg, **kw), 6)   # crosses an epoch boundary
    want = take(_per_element_batches(src, cfg, **kw), 6)
    assert_batches_equal(got, want)
    assert all(x[k].dtype == y[k].dtype for x, y in zip(got, want) for k in x)
