"""The slice pipeline: grain batches of single slices, the trainer's data module for `config.dataset.kind = "slices"`.

`train_iterator` and `eval_batches` over a random-access slice source
(`ich_jax.data.series_index`), in the order every data module shares
(`ich_jax.data.streams`), with the epochs `config.data` asks for
(`ich_jax.data.sampling`). Each example goes through the steps of
`ich_jax.data.slice_inputs`, as `config.data` plans them
(`ich_jax.data.slice_plan`); training batches are built a batch at a time
(`ich_jax.data.batching`). With `config.data.preprocess_on = "device"` the
training batches stop at the HU slices (plus each example's random map) and
the jitted train step does the rest (`train_finish`, `ich_jax.data.on_device`).
"""
from __future__ import annotations

import functools

import grain

from ich_jax.data import batching, datasets, sampling, series_index, slice_inputs, slice_plan, streams


def train_dataset(source, cfg, *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The training IterDataset (see `train_iterator`)."""
  src = series_index.as_series_source(source)
  plan = slice_plan.from_config(cfg)
  slice_inputs.require_header_windows(src, plan)
  if plan.offsets != (0,) and len(src):
    src.index  # build once here, not in every worker
  sampler = sampling.epoch_sampler(src, cfg, seed=seed)

  def to_examples(ds):
    # Grain hands on (stream position, record index) pairs; `batching.TrainBatch`
    # reads and augments a whole batch in one call.
    return sampling.sample_records(sampler, ds).map_with_index(_position_and_record)

  return streams.train_batches(len(src) if sampler is None else sampler.length, to_examples, cfg,
                               global_batch_size=global_batch_size, seed=seed,
                               process_index=process_index, process_count=process_count,
                               batch_fn=batching.TrainBatch(src, plan, augment_seed=streams.derived_seed(seed, 1)))


def _position_and_record(position: int, record: int) -> tuple[int, int]:
  return int(position), int(record)


def train_iterator(source, cfg, *, global_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Infinite, shuffled, augmented batches of this process's share of each global batch.

  With preprocessing on the device (`cfg.preprocess_on`), the batches carry
  `hu` (and `warp`) instead of `image`; `train_finish` makes the model input
  from them inside the train step.

  Each epoch is a different permutation of all records, fixed by `seed`;
  batches are `global_batch_size // process_count` examples (see
  `ich_jax.data.streams` for how processes split a global batch). The iterator's
  `get_state()` is a small JSON-serialisable dict; `set_state` on a fresh
  iterator built with the same arguments and config resumes exactly. The
  batches do not depend on `cfg.num_workers`, but the state's layout does, so
  resume with the same `num_workers`. With `num_workers > 0` the process must
  have parsed absl flags (grain reads them).
  """
  return iter(train_dataset(source, cfg, global_batch_size=global_batch_size, seed=seed,
                            process_index=process_index, process_count=process_count))


def eval_batches(source, cfg, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """One deterministic pass, in record order, over this process's contiguous shard.

  Every process yields `streams.eval_num_batches(len(source), batch_size, process_count)`
  batches of exactly `batch_size`; padding rows have `valid == False`. Across
  processes every record appears exactly once with `valid == True`. No
  augmentation. Iterate the returned dataset again for another pass.
  """
  src = series_index.as_series_source(source)
  plan = slice_plan.from_config(cfg)
  slice_inputs.require_header_windows(src, plan)
  if plan.offsets != (0,) and len(src):
    src.index
  return streams.sharded_eval_batches(len(src), functools.partial(slice_inputs.load, src, plan), cfg,
                                      batch_size=batch_size, process_index=process_index,
                                      process_count=process_count)


# --- The trainer's data interface (ich_jax.train.loop.input_module, kind "slices") ---


def ensure_ready(dataset_config) -> None:
  """Builds the TFDS dataset on first use."""
  datasets.ensure_built(dataset_config)


def open_split(dataset_config, split: str) -> series_index.SeriesSource:
  return series_index.as_series_source(datasets.open_split(dataset_config, split))


def in_channels(config) -> int:
  """The model's input channels: one per recipe entry."""
  return slice_plan.num_channels(config.data)


def train_finish(config):
  """What the train step applies to a training batch first: None, or with preprocessing on the device
  (`config.data.preprocess_on`) an `ich_jax.data.on_device.TrainFinish` (warp, window, resize)."""
  if not slice_plan.from_config(config.data).on_device:
    return None
  from ich_jax.data import on_device  # JAX only where it is used

  return on_device.TrainFinish(config.data)
