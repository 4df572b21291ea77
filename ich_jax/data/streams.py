"""The order every data module's batches come in: the training stream and the evaluation pass (grain).

Training order. The global stream is one index-shuffle of all records per
epoch (a fresh permutation each epoch), repeated forever; step k's global
batch is stream positions [k*B, (k+1)*B) and process p takes positions
p, p+P, ... of it. So the union of the per-process batches at a step does not
depend on how many processes there are, and augmentation randomness is keyed
by stream position, not by process.

Evaluation order. One deterministic pass in record order, each process over
its contiguous shard, every process yielding the same number of batches
(`eval_num_batches`), padded with `valid == False` rows.
"""
from __future__ import annotations

import functools
from typing import Callable

import grain
import numpy as np


def derived_seed(seed: int, purpose: int) -> int:
  # Grain's shuffle seeds epoch e with seed + e, so seeds s and s+1 would share
  # all but one epoch's order; hashing the user seed avoids that.
  return int(np.random.SeedSequence([int(seed), purpose]).generate_state(1)[0])


def _read_options(cfg) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(cfg.get("read_threads", 8)),
                           prefetch_buffer_size=int(cfg.get("prefetch_batches", 8)))


def _maybe_mp(ds: grain.IterDataset, cfg) -> grain.IterDataset:
  workers = int(cfg.get("num_workers", 0))
  if workers <= 0:
    return ds
  # Grain splits the stream over workers and interleaves their outputs back in
  # order, so batches and get_state()/set_state() match num_workers=0. Grain's
  # workers read absl flags: the process must have parsed them (absl.app.run).
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def _check_process(process_index: int, process_count: int):
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")


def train_batches(num_records: int, to_examples: Callable[[grain.MapDataset], grain.MapDataset], cfg, *,
                  global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, batch_fn: Callable | None = None) -> grain.IterDataset:
  """The training order every source kind shares (see the module docstring).

  `to_examples` maps the infinite MapDataset of shuffled record indices to
  examples; its random steps seed `random_map` with `derived_seed(seed, k)`,
  k >= 1 (k = 0 is the shuffle). Then this process's share of each global
  batch, batched (by `batch_fn`, default stacking), prefetched.
  """
  _check_process(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
  if num_records == 0:
    raise ValueError("train_batches: the source is empty")
  ds = to_examples(grain.MapDataset.range(num_records).shuffle(seed=derived_seed(seed, 0)).repeat())
  ds = ds[process_index::process_count]
  # Batch before leaving MapDataset: an element is then a whole batch, so both
  # thread prefetch and grain workers hand out whole batches and the batches do
  # not depend on num_workers.
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True, batch_fn=batch_fn)
  return _maybe_mp(ds.to_iter_dataset(_read_options(cfg)), cfg)


def _eval_element(load_fn: Callable[[int], dict], lo: int, hi: int, position: int) -> dict:
  valid = lo + position < hi
  # Padding repeats a real record of this shard (record 0 if the shard is
  # empty) so shapes and dtypes match, flagged valid=False.
  index = lo + position if valid else (hi - 1 if hi > lo else 0)
  example = load_fn(index)
  example["valid"] = np.bool_(valid)
  return example


def eval_num_batches(num_records: int, batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields: the same on all, so a multi-host eval loop stays in step."""
  largest_shard = -(-num_records // process_count)
  return max(1, -(-largest_shard // batch_size))


def sharded_eval_batches(num_records: int, load_fn: Callable[[int], dict], cfg, *, batch_size: int,
                         process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The evaluation pass every source kind shares (see the module docstring); `load_fn(i)` → example of record i."""
  _check_process(process_index, process_count)
  if num_records == 0:
    raise ValueError("eval_batches: the source is empty")
  lo, hi = process_index * num_records // process_count, (process_index + 1) * num_records // process_count
  total = eval_num_batches(num_records, batch_size, process_count) * batch_size
  ds = grain.MapDataset.range(total).map(functools.partial(_eval_element, load_fn, lo, hi))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _maybe_mp(ds.to_iter_dataset(_read_options(cfg)), cfg)
