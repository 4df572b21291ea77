"""Windows of slices: seed 002's patch U-Net trains on them (§5, "the third experiment").

`config.dataset.kind = "patches"`. A training example is one window of
`config.data.patch.size` pixels of a slice as the slice pipeline makes it
(`config.data`: recipe, resize to `image_size`), with the same window of its
mask; windows sit on the grid the sliding-window inference uses
(`ich_jax.grid.patch_grid`, stride `config.data.patch.stride`), so the
model trains on exactly the windows it later sees. Evaluation batches are
whole slices (`pipeline.eval_batches`): the segmentation task stitches them
(`config.task.patch`, `stride`).

Undersampling (seed 002 §6: "a random undersampling approach was applied to
the training data to reduce the number of ... 160 × 160 windows that do not
have an ICH"): an epoch is every window with blood (≥ 1 mask pixel) and
`negative_ratio` times as many windows without, drawn at random from all the
others (once, or afresh each epoch with `redraw_each_epoch`). The public code
instead keeps all 49 windows of one random blood-free slice per subject.

Augmentation (seed 002 §6's linear transforms, `config.data.augment`) warps
the window with its mask after cropping, as the public code's Keras generator
warps its saved windows; out-of-frame pixels take the window's darkest value.
"""
from __future__ import annotations

import functools

import grain
import numpy as np

from ich_jax.data import augment as augment_lib
from ich_jax.data import pipeline, resample, sampling, series_index, slice_inputs, slice_plan, streams
from ich_jax.grid import patch_grid


def grid(cfg) -> list[tuple[int, int]]:
  """Window origins on the `image_size` slice for `config.data.patch`."""
  size = int(cfg.image_size)
  return patch_grid((size, size), int(cfg.patch.size), int(cfg.patch.stride))


def blood_windows(source, cfg) -> np.ndarray:
  """bool [records, windows]: the window holds at least one blood pixel (mask resized as the pipeline does)."""
  size, patch = int(cfg.image_size), int(cfg.patch.size)
  origins = grid(cfg)
  src = series_index.as_series_source(source)
  getitems = getattr(src.source, "__getitems__", None)
  out = np.zeros((len(src), len(origins)), bool)
  for start in range(0, len(src), 256):
    ids = list(range(start, min(len(src), start + 256)))
    for i, rec in zip(ids, getitems(ids) if getitems is not None else [src[i] for i in ids]):
      if "mask" not in rec:
        raise ValueError(f"config dataset.kind='patches': record {i} has no mask (patch sampling needs masks)")
      mask = resample.resize_mask(rec["mask"], size)
      for j, (y, x) in enumerate(origins):
        out[i, j] = mask[y:y + patch, x:x + patch].any()
  return out


def _draw(blood: np.ndarray, ratio: float, redraw: bool, seed: int, epoch: int) -> np.ndarray:
  """One epoch's window ids (record × windows + window): every blood window, then `ratio` × as many others."""
  positive = np.flatnonzero(blood.ravel())
  negative = np.flatnonzero(~blood.ravel())
  rng = np.random.default_rng([int(seed), 11, int(epoch) if redraw else 0])
  n = min(len(negative), int(round(ratio * len(positive))))
  return np.concatenate([positive, rng.choice(negative, n, replace=False)]).astype(np.int64)


def window_sampler(source, cfg, *, seed: int) -> sampling.EpochSampler:
  p = cfg.patch
  if cfg.get("sampling", None) is not None and cfg.sampling.get("mode", "all") != "all":
    raise ValueError(f"config data.sampling.mode={cfg.sampling.mode!r}: patch training samples windows "
                     "(data.patch.negative_ratio); set data.sampling.mode='all'")
  blood = blood_windows(source, cfg)
  if not blood.any():
    raise ValueError("config dataset.kind='patches': no training window holds blood")
  ratio = float(p.get("negative_ratio", 1.0))
  draw = functools.partial(_draw, blood, ratio, bool(p.get("redraw_each_epoch", False)), seed)
  return sampling.EpochSampler(len(draw(0)), draw)


def crop(example: dict, origin: tuple[int, int], patch: int) -> dict:
  """The window at `origin` of a preprocessed example's `image` and `mask`; other fields unchanged."""
  y, x = origin
  out = dict(example)
  for key in ("image", "mask"):
    if key in out:
      out[key] = np.ascontiguousarray(np.asarray(out[key])[y:y + patch, x:x + patch])
  out["patch_origin"] = np.array(origin, np.int32)
  return out


def _load_window(source, plan, origins, patch, window_id: int) -> dict:
  record, window = divmod(int(window_id), len(origins))
  return crop(slice_inputs.load(source, plan, record), origins[window], patch)


def _augment(plan, example: dict, rng: np.random.Generator) -> dict:
  return slice_inputs.numpy_fields(augment_lib.augment(example, rng, plan.augment))


def train_dataset(source, cfg, *, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Shuffled, augmented batches of windows in the shared training order (`streams.train_batches`)."""
  src = series_index.as_series_source(source)
  plan = slice_plan.from_config(cfg)
  if plan.offsets != (0,) and len(src):
    src.index
  origins, patch = grid(cfg), int(cfg.patch.size)
  sampler = window_sampler(src, cfg, seed=seed)

  def to_examples(ds):
    ds = sampling.sample_records(sampler, ds).map(functools.partial(_load_window, src, plan, origins, patch))
    if plan.augment.enabled:
      ds = ds.random_map(functools.partial(_augment, plan), seed=streams.derived_seed(seed, 1))
    return ds

  return streams.train_batches(sampler.length, to_examples, cfg, global_batch_size=global_batch_size, seed=seed,
                               process_index=process_index, process_count=process_count)


def train_iterator(source, cfg, **kw) -> grain.DatasetIterator:
  """`pipeline.train_iterator`'s contract (resumable, sharded by process) over windows."""
  return iter(train_dataset(source, cfg, **kw))


# --- The trainer's data interface (ich_jax.train.loop.input_module, kind "patches") ---
# Whole slices for evaluation, the slice pipeline's sources and channels.
eval_batches = pipeline.eval_batches
ensure_ready = pipeline.ensure_ready
open_split = pipeline.open_split
in_channels = pipeline.in_channels
