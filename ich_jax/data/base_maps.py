"""Slices beside the frozen base segmentation models' probability maps: the weight model's examples.

Seed 000 (§2.2.3, Fig. 3) trains a weight model on "five-channel segmentation
results from five base models": each base U-Net is frozen by then, so its maps
are data. They are written once per base run with

  python launch.py --config configs/segmentation.py:MODEL --workdir W --mode export_features

(`ich_jax.train.export`; the segmentation task's `export`), the way seed 003's
sequence models read exported stage-1 outputs, and training the weight model
never reruns a U-Net. The export's `maps.npy` (format and memory:
`ich_jax.data.stage_exports`) holds each slice's blood-probability map at the base
model's input size, float16, memory-mapped here.

`config.dataset.kind = "base_maps"`. `config.dataset` names the slice dataset
(as for `kind = "slices"`) and `exports`, the base runs' workdirs, each
exported for the split read. An example is the slice as the slice pipeline
makes it for `config.data` (`image` [H, W, C] from the recipe, `mask`,
`labels`, ids, spacing), plus `maps` [H, W, N] float32, base model n's map in
channel n (the order of `exports`). The reference mask comes from the dataset
with the pipeline's resizing (nearest), so it lies on the maps' grid when
`config.data.image_size` is the base models' input size (checked).

Joining: a row of an export names the record of the split it was computed
from (`record_index`); each example checks that the record's series_id and
slice_index are the row's, so an export of another build or split is an
error, not a silent misalignment.

No augmentation: the maps were computed on unaugmented slices, and warping
image and mask without re-running the base models would misalign them with
the maps (`config.data.augment.enabled` must be False).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np

from ich_jax.data import folds, pipeline, sampling, series_index, slice_inputs, slice_plan, stage_exports, streams


class BaseMapsSource:
  """A slice split with N exports' maps of it: `len` slices, `[i]` → the slice record (HU image, as the
  slice source gives it: evaluation's baseline reads it), `maps(i, ...)` → [H, W, N] float32.

  The maps are memory-mapped on first use in each process; pickling (grain
  workers) carries the paths, not the arrays.
  """

  def __init__(self, slices: series_index.SeriesSource, workdirs: Sequence, split: str):
    if folds.parse_split(split)[1] is not None:
      raise ValueError(f"split {split!r}: base maps join an export to the dataset split of the same name; "
                       "name a whole split (folds of an export are for series_features)")
    # SeriesFeatureSource checks that the exports hold the same slices in the same order.
    exports = stage_exports.SeriesFeatureSource(workdirs, split)
    self.slices = slices
    self.split = split
    self.dirs = exports.dirs
    no_maps = [str(d) for d in self.dirs if not all((d / f).is_file() for f in ("maps.npy", "record_index.npy"))]
    if no_maps:
      raise ValueError(f"config dataset.exports: {no_maps} hold no maps.npy and record_index.npy; export a "
                       "segmentation run (config task.name='segmentation') with --mode export_features")
    sizes = {tuple(m["map_size"]) for m in exports.metas}
    if len(sizes) != 1:
      raise ValueError(f"config dataset.exports: the base maps differ in size {sorted(sizes)} across {self.dirs}")
    self.map_size = sizes.pop()
    num_rows = exports.metas[0]["num_slices"]
    if num_rows != len(slices):
      raise ValueError(f"export {self.dirs[0]} holds {num_rows} slices, but split {split!r} of the dataset has "
                       f"{len(slices)}: export the base runs on this dataset build and split")
    # Export row of each record, and the ids each row claims (checked per example).
    record_index = np.load(self.dirs[0] / "record_index.npy")
    if not np.array_equal(np.sort(record_index), np.arange(len(slices))):
      raise ValueError(f"export {self.dirs[0]}: record_index is not a permutation of the split's "
                       f"{len(slices)} records")
    self.row_of_record = np.empty(len(slices), np.int64)
    self.row_of_record[record_index] = np.arange(len(record_index))
    row_series = np.repeat(np.arange(len(exports.series_id)), exports.stops - exports.starts)
    self.row_series_id = exports.series_id[row_series]
    self.row_slice_index = np.load(self.dirs[0] / "slice_index.npy")
    self._maps: list[np.ndarray] | None = None

  def __getstate__(self):
    return {**self.__dict__, "_maps": None}

  def __len__(self) -> int:
    return len(self.slices)

  def __getitem__(self, i: int) -> dict:
    return self.slices[int(i)]

  def maps(self, record: int, series_id, slice_index: int) -> np.ndarray:
    """[H, W, N] float32 maps of `record`, after checking that its export row is that slice."""
    if self._maps is None:
      self._maps = [np.load(d / "maps.npy", mmap_mode="r") for d in self.dirs]
    row = int(self.row_of_record[int(record)])
    sid = folds.as_text(np.asarray([series_id]))[0]
    if sid != self.row_series_id[row] or int(slice_index) != int(self.row_slice_index[row]):
      raise ValueError(f"export {self.dirs[0]} row {row} is series_id={self.row_series_id[row]!r} slice_index="
                       f"{int(self.row_slice_index[row])}, but record {record} of split {self.split!r} is "
                       f"series_id={sid!r} slice_index={int(slice_index)}: the export was made from another "
                       "build of the dataset; export the base runs again")
    return np.stack([m[row] for m in self._maps], axis=-1).astype(np.float32)


def _check(source: BaseMapsSource, cfg) -> slice_plan.Plan:
  plan = slice_plan.from_config(cfg)
  if plan.augment.enabled:
    raise ValueError("config data.augment.enabled=True: base maps are fixed outputs on unaugmented slices, so "
                     "warped images and masks would no longer match them; set it False")
  if source.map_size != (plan.image_size, plan.image_size):
    raise ValueError(f"config data.image_size={plan.image_size}, but the base maps in {source.dirs[0]} are "
                     f"{source.map_size[0]}×{source.map_size[1]}: use the base models' input size")
  if plan.offsets != (0,) and len(source):
    source.slices.index  # build once here, not in every worker
  return plan


def load(source: BaseMapsSource, cfg, index: int) -> dict:
  """Record `index` → the slice pipeline's example for `config.data` plus `maps` [H, W, N]."""
  example = slice_inputs.load(source.slices, slice_plan.from_config(cfg), index)
  example["maps"] = source.maps(index, example["series_id"], example["slice_index"])
  return example


def train_dataset(source: BaseMapsSource, cfg, *, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Shuffled batches in the slice pipeline's order (`streams.train_batches`), its epoch sampling included."""
  plan = _check(source, cfg)
  sampler = sampling.epoch_sampler(source.slices, cfg, seed=seed)

  def to_examples(ds):
    return sampling.sample_records(sampler, ds).map(functools.partial(load, source, plan))

  return streams.train_batches(len(source) if sampler is None else sampler.length, to_examples, cfg,
                               global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                               process_count=process_count)


def train_iterator(source: BaseMapsSource, cfg, **kw) -> grain.DatasetIterator:
  """`pipeline.train_iterator`'s contract (resumable, sharded by process) with maps."""
  return iter(train_dataset(source, cfg, **kw))


def eval_batches(source: BaseMapsSource, cfg, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """`pipeline.eval_batches`' contract (one pass in record order, `valid` padding) with maps."""
  plan = _check(source, cfg)
  return streams.sharded_eval_batches(len(source), functools.partial(load, source, plan), cfg,
                                      batch_size=batch_size, process_index=process_index,
                                      process_count=process_count)


# --- The trainer's data interface (ich_jax.train.loop.input_module, kind "base_maps") ---


def ensure_ready(dataset_config) -> None:
  """Builds the slice dataset on first use; checks the exports are there and match its training split."""
  pipeline.ensure_ready(dataset_config)
  open_split(dataset_config, dataset_config.train_split)


def open_split(dataset_config, split: str) -> BaseMapsSource:
  """`dataset_config.exports`: the workdirs of the base segmentation runs, each exported for `split`."""
  return BaseMapsSource(pipeline.open_split(dataset_config, split), dataset_config.exports, split)


def in_channels(config) -> int:
  """The weight model's input: one channel per base model, then the image's when `config.task.with_image`."""
  exports = config.dataset.exports
  if isinstance(exports, str) or not len(exports):
    raise ValueError(f"config dataset.exports={exports!r}: expected a non-empty list of exporting workdirs")
  image = slice_plan.num_channels(config.data) if config.task.get("with_image", False) else 0
  return len(exports) + image
