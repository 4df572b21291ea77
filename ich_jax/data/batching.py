"""The slice pipeline's grain `batch_fn`s: a whole batch per call rather than one example per grain element.

`TrainBatch` reads, augments and finishes every example of a training batch
(`ich_jax.data.slice_inputs`); `HostBatch` then writes their channels, resized,
straight into one batch array. The batches are those of per-element grain maps
(`map`, `random_map`, `map`, `batch`), bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from ich_jax.data import instances, resample, series_index, slice_inputs, slice_plan, windows


def _channels_into(out: np.ndarray, hu: np.ndarray, plan: slice_plan.Plan, plane: np.ndarray,
                   brain: np.ndarray | None = None, hu_window: np.ndarray | None = None) -> None:
  """`slice_inputs.to_channels` + `resample.resize` of one example's `hu` (and `brain`; `hu_window`, the header
  windows of intensity "dicom_window"), written into out [S, S, C]; plane: [H, W] float32 scratch."""
  h, w = hu.shape[:2]
  resized = (h, w) != out.shape[:2]
  target = np.empty((h, w, out.shape[-1]), np.float32) if resized else out
  for c, (offset, level, width, op) in enumerate(plan.recipe):
    source = hu[..., plan.offsets.index(offset)]
    if plan.intensity == "window":
      windows.apply_window(source, level, width, out=plane)
    elif plan.intensity == "dicom_window":
      plane[...] = windows.apply_dicom_window(source, hu_window[plan.offsets.index(offset)], level, width)
    else:
      windows.clip_rescale(source, *plan.clip_range, *plan.clip_out_range, out=plane)
    if op == "skull_stripped":
      # Outside the brain: the channel's air value, as windows.apply_recipe(_clip_rescale) sets it.
      plane[brain[..., plan.stripped_offsets.index(offset)] == 0] = (
          plan.clip_out_range[0] if plan.intensity == "clip_rescale" else 0.0)
    target[..., c] = plane
  if resized:
    out[...] = resample.resize_image(target, out.shape[0])


class HostBatch:
  """The host pipeline's grain `batch_fn`: stacks the fields of `hu_example`s and makes `image` [B, S, S, C].

  Each example's channels are written straight into one preallocated batch
  array, instead of a fresh [H, W, C] float32 image per example that np.stack
  then copies: windows plus batching cost ~4x less (docs/PERFORMANCE.md, Input
  pipeline). The values are `slice_inputs.preprocess`'s, bit for bit.
  """

  def __init__(self, cfg):
    self.plan = slice_plan.from_config(cfg)
    self._shared_memory = False

  def enable_shared_memory_output(self) -> None:
    # grain asks for this under mp_prefetch: the batch then crosses processes without a copy.
    self._shared_memory = True

  def __call__(self, examples: Sequence[dict]) -> dict:
    plan = self.plan
    size = plan.image_size
    shape = (len(examples), size, size, len(plan.recipe))
    image = (grain.multiprocessing.SharedMemoryArray(shape, np.float32) if self._shared_memory
             else np.empty(shape, np.float32))
    plane = np.empty(examples[0]["hu"].shape[:2], np.float32)
    for i, example in enumerate(examples):
      _channels_into(image[i], example["hu"], plan, plane, example.get("brain"), example.get("hu_window"))
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k not in ("hu", "brain", "hu_window")}
    for key in ("mask", "brain_mask"):
      if key in batch and batch[key].shape[1:] != (size, size):
        h, w = batch[key].shape[1:]
        batch[key] = batch[key][:, resample.nearest_rows(h, size)][:, :, resample.nearest_rows(w, size)]
    if plan.instances:
      # After the resize: boxes in the model input's pixels.
      found = [instances.from_mask(m, plan.instances) for m in batch["mask"]]
      batch.update({k: np.stack([f[k] for f in found]) for k in instances.FIELDS})
    batch["image"] = image
    return batch


class StreamRng:
  """The generator grain's `random_map(fn, seed=seed)` gives the element at stream position `index`.

  Grain (its RngPool) resets one Philox generator keyed by `seed` to the
  counter [0, 0, 0, index] for every element; so does `at`, so augmentation
  drawn here per batch is the augmentation a per-element `random_map` drew.
  One instance per thread: `at` hands out the same generator each time.
  """

  def __init__(self, seed: int):
    self._rng = np.random.Generator(np.random.Philox(seed))
    self._state = self._rng.bit_generator.state

  def at(self, index: int) -> np.random.Generator:
    state = self._state
    state["state"]["counter"] = np.array([0, 0, 0, index], dtype=np.uint64)
    state["buffer"] = np.zeros(4, np.uint64)
    state["buffer_pos"] = 4
    state["has_uint32"] = 0
    state["uinteger"] = 0
    self._rng.bit_generator.state = state
    return self._rng


def _stack(values: Sequence[np.ndarray], shared_memory: bool) -> np.ndarray:
  first = values[0]
  if not shared_memory or first.dtype.hasobject or first.dtype.kind in "US":
    return np.stack(values)
  return np.stack(values, out=grain.multiprocessing.SharedMemoryArray((len(values),) + first.shape, first.dtype))


class TrainBatch:
  """The training pipeline's grain `batch_fn`: (stream position, record index) pairs → one batch.

  Per example (`ich_jax.data.slice_inputs`): `read_example`, the augmentation
  with the generator of its stream position (`StreamRng`: `augment_hu` on the
  host; with preprocessing on the device the maps, drawn for the whole batch
  by `draw_warps`), `hu_example`; then `HostBatch`, or stacking with
  preprocessing on the device. The batches are those of the same steps as
  per-element grain maps (`map`, `random_map`, `map`, `batch`), but grain's
  per-element machinery and thread hand-offs happen once per batch
  (docs/PERFORMANCE.md, Input pipeline).
  """

  def __init__(self, source: series_index.SeriesSource, plan: slice_plan.Plan, *, augment_seed: int):
    self.source = source
    self.plan = plan
    self.augment_seed = int(augment_seed)
    self.host = None if plan.on_device else HostBatch(plan)
    self._shared_memory = False

  def enable_shared_memory_output(self) -> None:
    # grain asks for this under mp_prefetch: the batch then crosses processes without a copy.
    self._shared_memory = True
    if self.host is not None:
      self.host.enable_shared_memory_output()

  def __call__(self, items: Sequence[tuple[int, int]]) -> dict:
    plan = self.plan
    examples = [slice_inputs.read_example(self.source, record, plan.offsets) for _, record in items]
    if plan.augment.enabled:
      rng = StreamRng(self.augment_seed)
      if plan.on_device:
        examples = slice_inputs.draw_warps(plan, examples, (rng.at(position) for position, _ in items))
      else:
        examples = [slice_inputs.augment_hu(plan, e, rng.at(position)) for (position, _), e in zip(items, examples)]
    examples = [slice_inputs.hu_example(e, plan) for e in examples]
    if self.host is not None:
      return self.host(examples)
    return {k: _stack([e[k] for e in examples], self._shared_memory) for k in examples[0]}
