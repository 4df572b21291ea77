"""A slice record → a model input, one example at a time: the slice pipeline's dict → dict steps.

Evaluation (`preprocess`, `load`):
  read (record + the HU slices the channel recipe asks for: `read_example`)
  -> to_channels (windows or clip_rescale, `image` becomes float32 [H, W, C])
  -> resize (to `image_size`, `ich_jax.data.resample`)
  -> the schema's dtypes (`numpy_fields`).
Training: read -> augment (the HU slices, one warp for all of them:
`augment_hu`; or, with preprocessing on the device, only the warp's map:
`draw_warps`) -> `hu_example`; `ich_jax.data.batching` makes the channels
straight into the batch, or the train step does (`ich_jax.data.on_device`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ich_jax.data import augment as augment_lib
from ich_jax.data import instances, resample, series_index, slice_plan, windows


# A slice's DICOM header window (first WindowCenter, WindowWidth; nan where absent), as rsna_ich stores it and
# `study.Study.records` gives it for a DICOM study: what intensity "dicom_window" windows each slice by.
WINDOW_FIELD = "dicom_window"


def read_example(source: series_index.SeriesSource, index: int, offsets: Sequence[int]) -> dict:
  """Record `index` plus `slices`: offset -> HU slice (nearest existing slice past an edge), and, where the
  records carry `dicom_window`, `slice_windows`: offset -> that slice's header window.

  A neighbour is read as a whole record (the source has no per-field reads),
  so a 3-neighbour recipe costs up to three record reads per example.
  """
  record = dict(source[index])
  record["record_index"] = np.int64(index)
  neighbours = ({0: int(index)} if tuple(offsets) == (0,) else
                source.neighbours(record["series_id"], record["slice_index"], offsets))
  cache = {int(index): record}
  for j in set(neighbours.values()) - set(cache):
    cache[j] = source[j]
  record["slices"] = {o: cache[j]["image"] for o, j in neighbours.items()}
  if WINDOW_FIELD in record:
    record["slice_windows"] = {o: np.asarray(cache[j][WINDOW_FIELD], np.float32) for o, j in neighbours.items()}
  return record


def require_header_windows(source, cfg) -> None:
  """With intensity "dicom_window", a source whose records carry no `dicom_window` is refused before any batch."""
  if slice_plan.from_config(cfg).intensity == "dicom_window" and len(source) and WINDOW_FIELD not in source[0]:
    raise ValueError(_no_window_message(source[0], "record 0"))


def _header_windows(example: dict) -> dict:
  if "slice_windows" not in example:
    raise ValueError(_no_window_message(example, f"record {example.get('record_index', '?')}"))
  return example["slice_windows"]


def _no_window_message(record, where: str) -> str:
  return (f"config data.intensity='dicom_window' windows each slice by its own DICOM header window (seed 003's "
          f"public code), read from the record field {WINDOW_FIELD!r}, but {where} (series "
          f"{series_index.as_bytes(record.get('series_id', b'?')).decode(errors='replace')}, slice "
          f"{record.get('slice_index', '?')}) has none: rsna_ich records and DICOM studies carry it; a dataset "
          "built without it, or a NIfTI study, does not. Set data.intensity='window' for the recipe's fixed windows")


def to_channels(example: dict, cfg) -> dict:
  """Replaces HU `image` and `slices` by the float32 [H, W, C] channel image."""
  plan = slice_plan.from_config(cfg)
  out = dict(example)
  slices = out.pop("slices")
  out.pop("slice_windows", None)
  spacing = out.get("pixel_spacing")
  if plan.brain_mask:
    from ich_jax.data import skull_strip

    out["brain_mask"] = skull_strip.brain_mask(slices[0], spacing).astype(np.uint8)
  if plan.intensity == "window":
    out["image"] = windows.apply_recipe(slices, plan.recipe, spacing)
  elif plan.intensity == "dicom_window":
    out["image"] = windows.apply_recipe_dicom_window(slices, _header_windows(example), plan.recipe, spacing)
  else:
    out["image"] = windows.apply_recipe_clip_rescale(slices, plan.recipe, plan.clip_range, plan.clip_out_range,
                                                     spacing)
  return out


# The slice schema's dtypes. TFDS returns scalar features as Python int/float,
# which numpy would widen to int64/float64; batches keep the declared types.
SCHEMA_DTYPES = {
    "labels": np.float32, "mask": np.uint8, "brain_mask": np.uint8, "slice_index": np.int32, "z_position": np.float32,
    "pixel_spacing": np.float32, "slice_thickness": np.float32, "study_blood_ml": np.float32,
    "study_subtype_ml": np.float32, "slice_blood_ml": np.float32, "slice_subtype_ml": np.float32,
    "mimic": np.uint8, "record_index": np.int64,
}


def numpy_fields(example: dict) -> dict:
  """Every field as a numpy array, the schema's fields in their `SCHEMA_DTYPES`."""
  out = {}
  for k, v in example.items():
    dtype = SCHEMA_DTYPES.get(k)
    out[k] = np.asarray(v, dtype) if dtype is not None else np.asarray(v)
  return out


def preprocess(example: dict, cfg) -> dict:
  """read_example output -> model input dict (no augmentation); cfg is `config.data`."""
  plan = slice_plan.from_config(cfg)
  example = resample.resize(to_channels(example, plan), plan.image_size)
  return numpy_fields(instances.add_to_example(example, plan.instances))


def load(source: series_index.SeriesSource, plan: slice_plan.Plan, index: int) -> dict:
  """Record `index` as an evaluation example: `read_example`, then `preprocess`."""
  return preprocess(read_example(source, index, plan.offsets), plan)


def augment_hu(plan: slice_plan.Plan, example: dict, rng: np.random.Generator) -> dict:
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


def draw_warps(plan: slice_plan.Plan, examples: Sequence[dict], rngs) -> list[dict]:
  """`augment_hu`'s random maps, drawn the same way (`rngs`: each example's generator in turn), handed on as
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
  """read_example output (after `augment_hu` or `draw_warps`) → a training example before its channels.

  `hu`: [H, W, K], the recipe's distinct offsets in sorted order, at the stored
  size (int16 as stored, float32 once warped on the host); no `image` (made
  from `hu` by `batching.HostBatch`, or on the device by the train step);
  `pixel_spacing` already as after the resize to `image_size`; `mask` as stored;
  with intensity "dicom_window", `hu_window` float32 [K, 2]: each plane's header
  window (center, width), in `hu`'s order; with skull stripping, `brain` [H, W, K'] uint8 (the brain masks of the recipe's
  stripped offsets, `slice_plan.Plan.stripped_offsets`) and/or `brain_mask` [H, W], as stored.
  """
  plan = slice_plan.from_config(cfg)
  out = dict(example)
  slices = out.pop("slices")
  out.pop("slice_windows", None)
  del out["image"]
  planes = [np.asarray(slices[o]) for o in plan.offsets]
  out["hu"] = planes[0][..., None] if len(planes) == 1 else np.stack(planes, axis=-1)
  if plan.intensity == "dicom_window":
    header = _header_windows(example)
    out["hu_window"] = np.stack([np.asarray(header[o], np.float32) for o in plan.offsets])
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
    out["pixel_spacing"] = resample.resized_spacing(out["pixel_spacing"], shape, plan.image_size)
  return numpy_fields(out)
