"""Grain input pipelines over a random-access slice source.

A source is anything with `len(src)` and `src[i]` -> dict of numpy values in
the `synthetic_ich` schema (`image` int16 HU [H, W], `labels`, `mask`,
`series_id`, `slice_index`, ... ); `tfds.data_source(...)` and a list of dicts
both qualify. Records may be in any order: neighbouring slices are found
through a (series_id, slice_index) -> record index map (`SeriesSource`).

Per element the steps are dict -> dict. Evaluation (`preprocess`):
  read (record + the HU slices the channel recipe asks for)
  -> to_channels (windows or clip_rescale, `image` becomes float32 [H, W, C])
  -> resize (to `image_size`)
and then batching. Training: read -> augment (the HU slices, one warp for all
of them; `ich_jax.data.augment`) -> `hu_example`, and `HostBatch` makes the
channels and resizes straight into the batch; `TrainBatch` runs these steps
for a whole batch per grain element. With `config.data.preprocess_on =
"device"` the training batches stop at `hu_example` (plus each example's
random map) and the jitted train step does the rest (`ich_jax.data.on_device`,
`train_finish`).

Training order. The global stream is one index-shuffle of all records per
epoch (a fresh permutation each epoch), repeated forever; step k's global
batch is stream positions [k*B, (k+1)*B) and process p takes positions
p, p+P, ... of it. So the union of the per-process batches at a step does not
depend on how many processes there are, and augmentation randomness is keyed
by stream position, not by process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import grain
import ml_collections
import numpy as np

from ich_jax import LABELS
from ich_jax.data import augment as augment_lib
from ich_jax.data import datasets, windows

INTENSITIES = ("window", "clip_rescale")


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data`: what a slice becomes before it reaches a model."""
  c = ml_collections.ConfigDict()
  # Output in-plane size; records of another size are resized (bilinear image,
  # nearest mask). 512 is the native RSNA matrix, also seed 001's input size.
  c.image_size = 512
  # (slice_offset, level, width) per channel; see ich_jax.data.windows for the
  # named recipes and their papers. Default: seed 003 §2 brain/subdural/bone.
  c.recipe = windows.RSNA_3WINDOW
  # "window": each channel apply_window(level, width) -> [0, 1].
  # "clip_rescale": each channel clip_rescale(clip_range -> clip_out_range);
  # level/width ignored, only the offsets are used (seed 001).
  c.intensity = "window"
  c.clip_range = (-240.0, 240.0)      # seed 001, Image Preprocessing
  c.clip_out_range = (-3.0, 3.0)      # seed 001, Image Preprocessing
  # True: each example also carries `brain_mask` (uint8 [H, W]), the slice's classical skull-stripping
  # mask (ich_jax.data.skull_strip), the target of a skull-stripping U-Net (configs/skull_strip.py).
  c.brain_mask = False
  # Loading: grain thread prefetch per process, and optional worker processes.
  c.read_threads = 8                   # threads, each building a whole batch
  c.prefetch_batches = 8               # batches buffered ahead (memory: B*H*W*C*4 bytes each)
  c.num_workers = 0                    # >0: grain mp_prefetch worker processes
  # Where the training slices are windowed, warped and resized. "device": the
  # batches carry the int16 HU slices (`hu`) and each example's affine map
  # (`warp`) instead of `image`, and the jitted train step does the rest
  # (ich_jax.data.on_device): the host only reads, so a few host cores feed an
  # accelerator. "host": grain does it all (numpy). "auto": "device" unless
  # JAX's backend is the CPU, where XLA's gathers are slower than the numpy
  # warp (docs/PERFORMANCE.md, Input pipeline). Evaluation batches are built on
  # the host either way, and so are inputs that need skull stripping.
  c.preprocess_on = "auto"
  c.augment = ml_collections.ConfigDict()
  a = c.augment
  a.enabled = True
  # Magnitudes from seed 002 (Methods, augmentation list; Keras-style ranges):
  # rotation <= 20 deg, width/height shift 0.1, zoom 0.2, shear 0.1 (Keras
  # reads shear in degrees, so 0.1 deg is effectively no shear).
  a.rotation_deg = 20.0
  a.shift_frac = 0.1                   # max shift per axis, fraction of the image size
  a.scale_range = (0.8, 1.2)           # isotropic; > 1 magnifies
  a.shear_deg = 0.1
  # Off by default: seed 002 forbids flips (all heads face the same way).
  # Seed 003 (§2) flips; its configs set hflip = True.
  a.hflip = False
  a.vflip = False
  # Training slices that show blood in a study with at most `small_bleed_ml` mL
  # appear `small_bleed_repeat` times per epoch (1 = plain epochs). Seed 000
  # (§2.2.1, Model 5) gives small lesions (<= 5 mL) a model of their own because
  # they are rare and hard; this is the single-model form of that emphasis.
  # Needs the dataset's `study_blood_ml` (datasets with masks).
  c.small_bleed_repeat = 1
  c.small_bleed_ml = 5.0
  # Which training slices make up an epoch (`EpochSampler`). "all": every
  # record once (small_bleed_repeat aside). "balanced" (seed 000 §2.1 and
  # §2.2.1): as many normal slices (no blood) as lesion slices, the lesion
  # slices optionally balanced over subtypes ("the same number of slices as
  # those of IPH, IVH, SDH, EDH, and SAH"); slices with blood that is not the
  # chosen lesion kind are left out.
  c.sampling = ml_collections.ConfigDict()
  s = c.sampling
  s.mode = "all"
  # Lesion slices: "any" blood, one subtype ("subdural", seed 000 Model 3), or
  # "small": blood in a study of at most small_bleed_ml mL (seed 000 Model 5).
  s.lesion = "any"
  s.balance_subtypes = True
  s.num_lesion = 0                     # lesion slices per epoch; 0 = as many as the split has
  # Seed 000 draws its balanced set once; True draws a fresh one every epoch
  # (more of the normal slices seen over a run).
  s.redraw_each_epoch = False
  return c


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Plain, picklable view of `config.data` used inside workers."""
  image_size: int
  recipe: tuple[tuple[int, float, float, str], ...]
  intensity: str
  clip_range: tuple[float, float]
  clip_out_range: tuple[float, float]
  augment: Any  # FrozenConfigDict
  on_device: bool = False
  brain_mask: bool = False

  @property
  def stripped_offsets(self) -> tuple[int, ...]:
    """The slice offsets whose brain mask a channel op needs (recipe entries with "skull_stripped")."""
    return tuple(sorted({o for o, _, _, op in self.recipe if op == "skull_stripped"}))

  @property
  def offsets(self) -> tuple[int, ...]:
    return windows.recipe_offsets(self.recipe)


def _plan(cfg) -> _Plan:
  if isinstance(cfg, _Plan):
    return cfg
  recipe = windows.parse_recipe(cfg.recipe)
  if not recipe:
    raise ValueError("config.data.recipe is empty")
  if cfg.get("brain_mask", False) and 0 not in windows.recipe_offsets(recipe):
    raise ValueError(f"config data.brain_mask=True needs the slice itself (offset 0) in data.recipe; it reads "
                     f"offsets {windows.recipe_offsets(recipe)}")
  if cfg.intensity not in INTENSITIES:
    raise ValueError(f"config.data.intensity={cfg.intensity!r}; expected one of {INTENSITIES}")
  defaults = default_data_config()
  get = lambda k: cfg.get(k, defaults[k])
  return _Plan(
      image_size=int(cfg.image_size),
      recipe=recipe,
      intensity=str(cfg.intensity),
      clip_range=tuple(float(x) for x in get("clip_range")),
      clip_out_range=tuple(float(x) for x in get("clip_out_range")),
      augment=ml_collections.FrozenConfigDict(cfg.augment),
      on_device=_on_device(get("preprocess_on"), skull_stripping=any(op for *_, op in recipe) or
                           bool(get("brain_mask"))),
      brain_mask=bool(get("brain_mask")),
  )


PREPROCESS_ON = ("host", "device", "auto")


def _on_device(where: str, skull_stripping: bool = False) -> bool:
  if where not in PREPROCESS_ON:
    raise ValueError(f"config data.preprocess_on={where!r}; expected one of {PREPROCESS_ON}")
  # Skull stripping (ich_jax.data.skull_strip) is scipy morphology: such inputs are made on the host.
  if skull_stripping:
    if where == "device":
      raise ValueError("config data.preprocess_on='device': skull stripping (a recipe channel op "
                       "'skull_stripped', or data.brain_mask=True) runs on the host; set 'host' or 'auto'")
    return False
  if where == "auto":
    import jax  # the backend decides; asked when a pipeline is planned, not at import

    return jax.default_backend() != "cpu"
  return where == "device"


def num_channels(cfg) -> int:
  """Channels of the `image` the pipeline emits for `config.data` (one per recipe entry)."""
  return len(cfg.recipe)


# --- Source with a series index -------------------------------------------------


class SeriesSource:
  """A random-access source plus a lazily built, cached (series_id, slice_index) index.

  Wrap a split once and pass the wrapper to every pipeline, so the index (one
  pass over the split) is built once. The index is only needed by recipes with
  nonzero slice offsets.

  Args:
    source: random-access source in the slice schema.
    metadata_source: optional second source over the same records in the same
      order that is cheaper to read, used only to build the index; e.g. for
      TFDS, `tfds.data_source(..., decoders={"image": tfds.decode.SkipDecoding(),
      "mask": tfds.decode.SkipDecoding()})`. Without it the index pass reads
      full records (`__getitems__` in chunks where the source has it).
  """

  def __init__(self, source, metadata_source=None):
    self.source = source
    self._metadata_source = metadata_source
    self._index: dict[bytes, tuple[np.ndarray, np.ndarray]] | None = None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(i)]

  def __getstate__(self):
    # Workers get the index if it was built; the metadata source is not needed there.
    return {"source": self.source, "_metadata_source": None, "_index": self._index}

  @property
  def index(self) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """series_id -> (sorted slice indices, record indices in the same order)."""
    if self._index is None:
      self._index = _build_index(self._metadata_source or self.source, len(self))
    return self._index

  def neighbours(self, series_id, slice_index: int, offsets: Sequence[int]) -> dict[int, int]:
    """offset -> record index of the slice to use (nearest existing slice if absent)."""
    key = _as_bytes(series_id)
    if key not in self.index:
      raise KeyError(f"series_id={key!r} is not in the series index (was metadata_source built from another split?)")
    slices, records = self.index[key]
    chosen = windows.select_neighbours(slices, int(slice_index), offsets)
    return {o: int(records[np.searchsorted(slices, s)]) for o, s in chosen.items()}


def as_series_source(source) -> SeriesSource:
  return source if isinstance(source, SeriesSource) else SeriesSource(source)


def _as_bytes(x) -> bytes:
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.encode() if isinstance(x, str) else bytes(x)


def _build_index(source, n: int, chunk: int = 1024):
  keys: dict[bytes, list[tuple[int, int]]] = {}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    ids = range(start, min(n, start + chunk))
    records = getitems(list(ids)) if getitems is not None else [source[i] for i in ids]
    for i, rec in zip(ids, records):
      keys.setdefault(_as_bytes(rec["series_id"]), []).append((int(rec["slice_index"]), i))
  index = {}
  for series, pairs in keys.items():
    pairs.sort()
    slices = np.array([s for s, _ in pairs], np.int64)
    dup = np.flatnonzero(np.diff(slices) == 0)
    if dup.size:
      s = slices[dup[0]]
      recs = [i for sl, i in pairs if sl == s]
      raise ValueError(f"series_id={series!r} has slice_index={s} in several records: {recs}")
    index[series] = (slices, np.array([i for _, i in pairs], np.int64))
  return index


# --- Per-element dict -> dict ops ----------------------------------------------


def read_example(source: SeriesSource, index: int, offsets: Sequence[int]) -> dict:
  """Record `index` plus `slices`: offset -> HU slice (nearest existing slice past an edge).

  A neighbour is read as a whole record (the source has no per-field reads),
  so a 3-neighbour recipe costs up to three record reads per example.
  """
  record = dict(source[index])
  record["record_index"] = np.int64(index)
  if tuple(offsets) == (0,):
    record["slices"] = {0: record["image"]}
    return record
  neighbours = source.neighbours(record["series_id"], record["slice_index"], offsets)
  cache = {int(index): record["image"]}
  for j in set(neighbours.values()) - set(cache):
    cache[j] = source[j]["image"]
  record["slices"] = {o: cache[j] for o, j in neighbours.items()}
  return record


def to_channels(example: dict, cfg) -> dict:
  """Replaces HU `image` and `slices` by the float32 [H, W, C] channel image."""
  plan = _plan(cfg)
  out = dict(example)
  slices = out.pop("slices")
  spacing = out.get("pixel_spacing")
  if plan.brain_mask:
    from ich_jax.data import skull_strip

    out["brain_mask"] = skull_strip.brain_mask(slices[0], spacing).astype(np.uint8)
  if plan.intensity == "window":
    out["image"] = windows.apply_recipe(slices, plan.recipe, spacing)
  else:
    out["image"] = windows.apply_recipe_clip_rescale(slices, plan.recipe, plan.clip_range, plan.clip_out_range,
                                                     spacing)
  return out


@functools.lru_cache(maxsize=32)
def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] bilinear resampling matrix, half-pixel centres, antialiased when shrinking.

  Same kernel as `jax.image.resize(method="linear")`: a triangle, widened by
  in/out when downsampling so every input pixel contributes (plain bilinear
  sampling of every 4th pixel would alias thin structures such as a
  subdural rim).
  """
  scale = out_size / in_size
  kernel_scale = min(scale, 1.0)
  centres = (np.arange(out_size) + 0.5) / scale - 0.5
  x = np.arange(in_size)
  w = np.maximum(0.0, 1.0 - np.abs(x[None, :] - centres[:, None]) * kernel_scale)
  w /= w.sum(axis=1, keepdims=True)
  return w.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """`_linear_weights` as taps: (input index [out, T], weight [out, T]) over each output's contiguous support.

  The triangle is T ≈ 2·in/out pixels wide, so T multiply-adds per output pixel
  replace a dense matrix product over all `in_size` inputs (64× fewer for 512 → 128).
  """
  w = _linear_weights(in_size, out_size)
  nonzero = w > 0
  first = nonzero.argmax(axis=1)
  last = in_size - 1 - nonzero[:, ::-1].argmax(axis=1)
  index = first[:, None] + np.arange(int((last - first).max()) + 1)
  inside = index < in_size
  index = np.minimum(index, in_size - 1)
  return index, np.where(inside, np.take_along_axis(w, index, axis=1), 0.0).astype(np.float32)


def _resample_rows(x: np.ndarray, out_size: int) -> np.ndarray:
  """[in, ...] → [out, ...] along the first axis with the `_linear_weights` kernel."""
  index, weight = _linear_taps(x.shape[0], out_size)
  shape = (-1,) + (1,) * (x.ndim - 1)
  out = weight[:, 0].reshape(shape) * x[index[:, 0]]
  for t in range(1, index.shape[1]):
    out += weight[:, t].reshape(shape) * x[index[:, t]]
  return out


def _nearest_rows(in_size: int, out_size: int) -> np.ndarray:
  return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64), in_size - 1)


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
  """A label map [H, W] at image_size² by nearest neighbour, as `resize` does to `mask`."""
  mask = np.asarray(mask)
  h, w = mask.shape[:2]
  if (h, w) == (image_size, image_size):
    return mask
  return mask[_nearest_rows(h, image_size)][:, _nearest_rows(w, image_size)]


def resize(example: dict, image_size: int) -> dict:
  """Resizes `image` (bilinear) and `mask` / `brain_mask` (nearest) to image_size², adjusting `pixel_spacing`."""
  image = example["image"]
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return example
  out = dict(example)
  out["image"] = _resize_image(image, image_size)
  for key in ("mask", "brain_mask"):
    if key in example:
      out[key] = resize_mask(example[key], image_size)
  if "pixel_spacing" in example:
    out["pixel_spacing"] = _resized_spacing(example["pixel_spacing"], (h, w), image_size)
  return out


def _resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
  rows = _resample_rows(np.asarray(image, np.float32), image_size)                   # [size, w, c]
  resized = np.ascontiguousarray(_resample_rows(rows.transpose(1, 0, 2), image_size).transpose(1, 0, 2))
  # The weights are positive and sum to 1 up to rounding: clip the ulp overshoot
  # so windowed channels stay inside [0, 1].
  return np.clip(resized, image.min(), image.max(), out=resized)


def _resized_spacing(pixel_spacing, shape: tuple[int, int], image_size: int) -> np.ndarray:
  factor = np.array([shape[0] / image_size, shape[1] / image_size], np.float32)
  return (np.asarray(pixel_spacing, np.float32) * factor).astype(np.float32)


# The slice schema's dtypes. TFDS returns scalar features as Python int/float,
# which numpy would widen to int64/float64; batches keep the declared types.
SCHEMA_DTYPES = {
    "labels": np.float32, "mask": np.uint8, "brain_mask": np.uint8, "slice_index": np.int32, "z_position": np.float32,
    "pixel_spacing": np.float32, "slice_thickness": np.float32, "study_blood_ml": np.float32,
    "mimic": np.uint8, "record_index": np.int64,
}


def _numpy_fields(example: dict) -> dict:
  out = {}
  for k, v in example.items():
    dtype = SCHEMA_DTYPES.get(k)
    out[k] = np.asarray(v, dtype) if dtype is not None else np.asarray(v)
  return out


def preprocess(example: dict, cfg) -> dict:
  """read_example output -> model input dict (no augmentation); cfg is `config.data`."""
  plan = _plan(cfg)
  return _numpy_fields(resize(to_channels(example, plan), plan.image_size))


def _read(source: SeriesSource, plan: _Plan, index: int) -> dict:
  return read_example(source, index, plan.offsets)


def load(source: SeriesSource, plan: _Plan, index: int) -> dict:
  return preprocess(read_example(source, index, plan.offsets), plan)


def _augment_hu(plan: _Plan, example: dict, rng: np.random.Generator) -> dict:
  """Augments a `read_example` output: its HU slices (one warp for all offsets) and mask.

  Warping the HU slices before windowing costs one plane per recipe slice
  instead of one per channel (a 3-window recipe reads one slice), and windows
  then see interpolated HU, as they would on a scan acquired in that pose.
  Out-of-frame pixels take each slice's minimum, i.e. air.
  """
  offsets = sorted(example["slices"])
  stack = np.stack([np.asarray(example["slices"][o], np.float32) for o in offsets], axis=-1)
  warped = augment_lib.augment({k: v for k, v in {"image": stack, "mask": example.get("mask"),
                                                  "pixel_spacing": example.get("pixel_spacing")}.items()
                                if v is not None}, rng, plan.augment)
  out = dict(example)
  out["slices"] = {o: warped["image"][..., i] for i, o in enumerate(offsets)}
  for key in ("mask", "pixel_spacing"):
    if key in warped:
      out[key] = warped[key]
  return out


def _draw_warps(plan: _Plan, examples: Sequence[dict], rngs) -> list[dict]:
  """`_augment_hu`'s random maps, drawn the same way (`rngs`: each example's generator in turn), handed on as
  `warp` for the on-device warp; one `augment.random_matrices` call for the batch."""
  shape = np.shape(examples[0]["image"])[:2]
  matrices = augment_lib.random_matrices(rngs, plan.augment, shape)
  terms = augment_lib.source_terms(matrices, shape)
  moved = ~augment_lib.is_identity(matrices)
  out = [dict(e, warp=t) for e, t in zip(examples, terms)]
  if "pixel_spacing" in examples[0] and moved.any():
    spacing = augment_lib.warped_spacing(np.stack([e["pixel_spacing"] for e in examples]), matrices)
    for e, s, m in zip(out, spacing, moved):
      if m:
        e["pixel_spacing"] = s
  return out


def hu_example(example: dict, cfg) -> dict:
  """read_example output (after `_augment_hu` or `_draw_warps`) → a training example before its channels.

  `hu`: [H, W, K], the recipe's distinct offsets in sorted order, at the stored
  size (int16 as stored, float32 once warped on the host); no `image` (made
  from `hu` by `HostBatch`, or on the device by the train step);
  `pixel_spacing` already as after the resize to `image_size`; `mask` as stored;
  with skull stripping, `brain` [H, W, K'] uint8 (the brain masks of the recipe's
  stripped offsets, `_Plan.stripped_offsets`) and/or `brain_mask` [H, W], as stored.
  """
  plan = _plan(cfg)
  out = dict(example)
  slices = out.pop("slices")
  del out["image"]
  planes = [np.asarray(slices[o]) for o in plan.offsets]
  out["hu"] = planes[0][..., None] if len(planes) == 1 else np.stack(planes, axis=-1)
  strip = plan.stripped_offsets
  if strip or plan.brain_mask:
    # Brain masks of the (warped) stored slices, at their own pixel spacing, as `to_channels` makes them.
    from ich_jax.data import skull_strip

    wanted = sorted(set(strip) | ({0} if plan.brain_mask else set()))
    brains = {o: skull_strip.brain_mask(slices[o], out.get("pixel_spacing")).astype(np.uint8) for o in wanted}
    if strip:
      out["brain"] = brains[strip[0]][..., None] if len(strip) == 1 else np.stack([brains[o] for o in strip], -1)
    if plan.brain_mask:
      out["brain_mask"] = brains[0]
  shape = out["hu"].shape[:2]
  if "pixel_spacing" in out and shape != (plan.image_size, plan.image_size):
    out["pixel_spacing"] = _resized_spacing(out["pixel_spacing"], shape, plan.image_size)
  return _numpy_fields(out)


def _channels_into(out: np.ndarray, hu: np.ndarray, plan: _Plan, plane: np.ndarray,
                   brain: np.ndarray | None = None) -> None:
  """`to_channels` + `resize` of one example's `hu` (and `brain`), written into out [S, S, C]; plane: [H, W]
  float32 scratch."""
  h, w = hu.shape[:2]
  resized = (h, w) != out.shape[:2]
  target = np.empty((h, w, out.shape[-1]), np.float32) if resized else out
  for c, (offset, level, width, op) in enumerate(plan.recipe):
    source = hu[..., plan.offsets.index(offset)]
    if plan.intensity == "window":
      windows.apply_window(source, level, width, out=plane)
    else:
      windows.clip_rescale(source, *plan.clip_range, *plan.clip_out_range, out=plane)
    if op == "skull_stripped":
      # Outside the brain: the channel's air value, as windows.apply_recipe(_clip_rescale) sets it.
      plane[brain[..., plan.stripped_offsets.index(offset)] == 0] = (
          0.0 if plan.intensity == "window" else plan.clip_out_range[0])
    target[..., c] = plane
  if resized:
    out[...] = _resize_image(target, out.shape[0])


class HostBatch:
  """The host pipeline's grain `batch_fn`: stacks the fields of `hu_example`s and makes `image` [B, S, S, C].

  Each example's channels are written straight into one preallocated batch
  array, instead of a fresh [H, W, C] float32 image per example that np.stack
  then copies: windows plus batching cost ~4x less (docs/PERFORMANCE.md, Input
  pipeline). The values are `preprocess`'s, bit for bit.
  """

  def __init__(self, cfg):
    self.plan = _plan(cfg)
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
      _channels_into(image[i], example["hu"], plan, plane, example.get("brain"))
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k not in ("hu", "brain")}
    for key in ("mask", "brain_mask"):
      if key in batch and batch[key].shape[1:] != (size, size):
        h, w = batch[key].shape[1:]
        batch[key] = batch[key][:, _nearest_rows(h, size)][:, :, _nearest_rows(w, size)]
    batch["image"] = image
    return batch


# --- Pipelines -------------------------------------------------------------------


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


SAMPLING_MODES = ("all", "balanced")


class EpochSampler:
  """Which records make up each training epoch: `length` slots; `record(epoch, slot)`.

  Epoch e's records are `draw(e)`, a pure function of (config, seed, e), so a
  resumed iterator sees the same epochs. Grain shuffles the slots within each
  epoch; the stream position p is slot p % length of epoch p // length.
  """

  def __init__(self, length: int, draw):
    self.length = int(length)
    self._draw = draw
    self._cache: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {"length": self.length, "_draw": self._draw, "_cache": {}}

  def records(self, epoch: int) -> np.ndarray:
    got = self._cache.get(epoch)
    if got is None:
      got = np.asarray(self._draw(epoch), np.int64)
      if len(got) != self.length:
        raise AssertionError(f"epoch {epoch} drew {len(got)} records, expected {self.length}")
      # Grain threads read the sampler concurrently; keep the last few epochs.
      self._cache = {**{k: v for k, v in self._cache.items() if k >= epoch - 1}, epoch: got}
    return got

  def record(self, position: int, slot: int) -> int:
    return int(self.records(int(position) // self.length)[int(slot)])


def _draw_fixed(records: np.ndarray, epoch: int) -> np.ndarray:
  return records


def _take(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
  """n of `pool`: without replacement while it lasts, then with (oversampling a rare class)."""
  if n <= len(pool):
    return rng.choice(pool, n, replace=False)
  return np.concatenate([rng.permutation(pool), rng.choice(pool, n - len(pool), replace=True)])


def balanced_records(labels: np.ndarray, lesion: np.ndarray, num_lesion: int, rng: np.random.Generator, *,
                     balance_subtypes: bool) -> np.ndarray:
  """Record indices of one balanced epoch: `num_lesion` lesion slices, then as many normal ones.

  labels: [N, 6] (any first); lesion: [N] bool, the slices that count as
  lesion. Normal slices have no blood (labels[:, 0] == 0); blood slices that
  are not lesion slices are never drawn. With `balance_subtypes`, every
  subtype present among the lesion slices gets num_lesion // K of the lesion
  slots (the first num_lesion % K subtypes one more): a slice with two
  subtypes can be drawn for each.
  """
  lesion_ids = np.flatnonzero(lesion)
  normal_ids = np.flatnonzero(labels[:, 0] < 0.5)
  if not len(lesion_ids) or not len(normal_ids):
    raise ValueError(f"balanced sampling needs lesion and normal slices; the split has {len(lesion_ids)} lesion "
                     f"and {len(normal_ids)} normal ones")
  if balance_subtypes:
    pools = [lesion_ids[labels[lesion_ids, k] > 0.5] for k in range(1, labels.shape[1])]
    pools = [pool for pool in pools if len(pool)]
    counts = [num_lesion // len(pools) + (i < num_lesion % len(pools)) for i in range(len(pools))]
    chosen = np.concatenate([_take(rng, pool, n) for pool, n in zip(pools, counts)])
  else:
    chosen = _take(rng, lesion_ids, num_lesion)
  return np.concatenate([chosen, _take(rng, normal_ids, num_lesion)]).astype(np.int64)


def _draw_balanced(labels, lesion, num_lesion, balance_subtypes, redraw, seed, epoch):
  rng = np.random.default_rng([int(seed), 7, int(epoch) if redraw else 0])
  return balanced_records(labels, lesion, num_lesion, rng, balance_subtypes=balance_subtypes)


def _metadata(source, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """`keys` of every record, in record order, from the cheapest source available."""
  src = as_series_source(source)
  return datasets.read_fields(src._metadata_source or src.source, keys)


def epoch_sampler(source, cfg, *, seed: int = 0) -> EpochSampler | None:
  """The training epochs `config.data` asks for, or None for plain epochs (every record once)."""
  repeat = int(cfg.get("small_bleed_repeat", 1))
  if repeat < 1:
    raise ValueError(f"config data.small_bleed_repeat={repeat}: need >= 1")
  sampling = cfg.get("sampling", None) or default_data_config().sampling
  mode = sampling.get("mode", "all")
  if mode not in SAMPLING_MODES:
    raise ValueError(f"config data.sampling.mode={mode!r}; expected one of {SAMPLING_MODES}")
  if mode == "all" and repeat == 1:
    return None
  lesion_kind = sampling.get("lesion", "any") if mode == "balanced" else "any"
  small = repeat > 1 or lesion_kind == "small"
  try:
    meta = _metadata(source, ("labels",) + (("study_blood_ml",) if small else ()))
  except datasets.MissingField as e:
    key, i = e.key, e.record
    why = (f"config data.small_bleed_repeat={repeat}" if repeat > 1 else
           f"config data.sampling.lesion={lesion_kind!r}")
    raise ValueError(f"{why} needs the field {key}, which record {i} of this dataset lacks"
                     + (" (datasets without masks have no volumes)" if key == "study_blood_ml" else "")) from None
  labels = meta["labels"].astype(np.float32).reshape(len(as_series_source(source)), -1)
  blood = labels[:, 0] > 0.5
  if small:
    volume = meta["study_blood_ml"].astype(np.float64).reshape(-1)
    small_blood = blood & (volume > 0) & (volume <= float(cfg.get("small_bleed_ml", 5.0)))
  if mode == "all":
    counts = np.where(small_blood, repeat, 1)
    records = np.repeat(np.arange(len(labels), dtype=np.int64), counts)
    return EpochSampler(len(records), functools.partial(_draw_fixed, records))
  if lesion_kind == "any":
    lesion = blood
  elif lesion_kind == "small":
    lesion = small_blood
  elif lesion_kind in LABELS[1:]:
    lesion = labels[:, LABELS.index(lesion_kind)] > 0.5
  else:
    raise ValueError(f"config data.sampling.lesion={lesion_kind!r}; expected 'any', 'small' or one of {LABELS[1:]}")
  if not lesion.any():
    raise ValueError(f"config data.sampling.lesion={lesion_kind!r}: no training slice is a lesion slice")
  num_lesion = int(sampling.get("num_lesion", 0)) or int(lesion.sum())
  balance = bool(sampling.get("balance_subtypes", True)) and lesion_kind in ("any", "small")
  draw = functools.partial(_draw_balanced, labels, lesion, num_lesion, balance,
                           bool(sampling.get("redraw_each_epoch", False)), seed)
  return EpochSampler(2 * num_lesion, draw)


def sample_records(sampler: EpochSampler | None, ds: grain.MapDataset) -> grain.MapDataset:
  """Maps the shuffled slot stream to record indices (identity for plain epochs)."""
  if sampler is None:
    return ds
  return ds.map_with_index(sampler.record)


def train_dataset(source, cfg, *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The training IterDataset (see `train_iterator`)."""
  src = as_series_source(source)
  plan = _plan(cfg)
  if plan.offsets != (0,) and len(src):
    src.index  # build once here, not in every worker
  sampler = epoch_sampler(src, cfg, seed=seed)

  def to_examples(ds):
    # Grain hands on (stream position, record index) pairs; `TrainBatch` reads
    # and augments a whole batch in one call.
    return sample_records(sampler, ds).map_with_index(_position_and_record)

  return train_batches(len(src) if sampler is None else sampler.length, to_examples, cfg,
                       global_batch_size=global_batch_size, seed=seed,
                       process_index=process_index, process_count=process_count,
                       batch_fn=TrainBatch(src, plan, augment_seed=derived_seed(seed, 1)))


def _position_and_record(position: int, record: int) -> tuple[int, int]:
  return int(position), int(record)


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

  Per example: `read_example`, the augmentation with the generator of its
  stream position (`StreamRng`: `_augment_hu` on the host; with preprocessing
  on the device the maps, drawn for the whole batch by `_draw_warps`),
  `hu_example`; then `HostBatch`, or stacking with preprocessing on the
  device. The batches are those of the same steps as per-element grain maps
  (`map`, `random_map`, `map`, `batch`), but grain's per-element machinery
  and thread hand-offs happen once per batch (docs/PERFORMANCE.md, Input
  pipeline).
  """

  def __init__(self, source: SeriesSource, plan: _Plan, *, augment_seed: int):
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
    examples = [read_example(self.source, record, plan.offsets) for _, record in items]
    if plan.augment.enabled:
      rng = StreamRng(self.augment_seed)
      if plan.on_device:
        examples = _draw_warps(plan, examples, (rng.at(position) for position, _ in items))
      else:
        examples = [_augment_hu(plan, e, rng.at(position)) for (position, _), e in zip(items, examples)]
    examples = [hu_example(e, plan) for e in examples]
    if self.host is not None:
      return self.host(examples)
    return {k: _stack([e[k] for e in examples], self._shared_memory) for k in examples[0]}


def train_iterator(source, cfg, *, global_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
  """Infinite, shuffled, augmented batches of this process's share of each global batch.

  With preprocessing on the device (`cfg.preprocess_on`), the batches carry
  `hu` (and `warp`) instead of `image`; `train_finish` makes the model input
  from them inside the train step.

  Each epoch is a different permutation of all records, fixed by `seed`;
  batches are `global_batch_size // process_count` examples (see the module
  docstring for how processes split a global batch). The iterator's
  `get_state()` is a small JSON-serialisable dict; `set_state` on a fresh
  iterator built with the same arguments and config resumes exactly. The
  batches do not depend on `cfg.num_workers`, but the state's layout does, so
  resume with the same `num_workers`. With `num_workers > 0` the process must
  have parsed absl flags (grain reads them).
  """
  return iter(train_dataset(source, cfg, global_batch_size=global_batch_size, seed=seed,
                            process_index=process_index, process_count=process_count))


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
  """The evaluation pass every source kind shares (see `eval_batches`); `load_fn(i)` → example of record i."""
  _check_process(process_index, process_count)
  if num_records == 0:
    raise ValueError("eval_batches: the source is empty")
  lo, hi = process_index * num_records // process_count, (process_index + 1) * num_records // process_count
  total = eval_num_batches(num_records, batch_size, process_count) * batch_size
  ds = grain.MapDataset.range(total).map(functools.partial(_eval_element, load_fn, lo, hi))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _maybe_mp(ds.to_iter_dataset(_read_options(cfg)), cfg)


def eval_batches(source, cfg, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """One deterministic pass, in record order, over this process's contiguous shard.

  Every process yields `eval_num_batches(len(source), batch_size, process_count)`
  batches of exactly `batch_size`; padding rows have `valid == False`. Across
  processes every record appears exactly once with `valid == True`. No
  augmentation. Iterate the returned dataset again for another pass.
  """
  src = as_series_source(source)
  plan = _plan(cfg)
  if plan.offsets != (0,) and len(src):
    src.index
  return sharded_eval_batches(len(src), functools.partial(load, src, plan), cfg, batch_size=batch_size,
                              process_index=process_index, process_count=process_count)


# --- The trainer's data interface (ich_jax.train.loop.input_module, kind "slices") ---


def ensure_ready(dataset_config) -> None:
  """Builds the TFDS dataset on first use."""
  datasets.ensure_built(dataset_config)


def open_split(dataset_config, split: str) -> SeriesSource:
  return as_series_source(datasets.open_split(dataset_config, split))


def in_channels(config) -> int:
  """The model's input channels: one per recipe entry."""
  return num_channels(config.data)


def train_finish(config):
  """What the train step applies to a training batch first: None, or with preprocessing on the device
  (`config.data.preprocess_on`) an `ich_jax.data.on_device.TrainFinish` (warp, window, resize)."""
  if not _plan(config.data).on_device:
    return None
  from ich_jax.data import on_device  # JAX only where it is used

  return on_device.TrainFinish(config.data)
