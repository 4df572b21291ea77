"""Hemorrhage instances of a slice: one box and one mask per connected component of each subtype's blood.

Seed 001's Mask R-CNN learns boxes and instance masks; the builders store a
label map per slice (`mask`: 0, or the LABELS index of the subtype). An
instance here is a connected component (8-connected, in-plane) of one
subtype's pixels on the slice, so two touching bleeds of different subtypes
are two instances and two separate bleeds of one subtype are two instances.

Fixed shapes, so one compiled train step serves every batch: at most
`max_instances` per slice, the largest first (the rest are dropped from the
detection targets; their pixels stay in `mask`, which evaluation reads).

Fields (`from_mask`):
  instance_map uint8 [H, W]: 0 outside every kept instance, g + 1 inside instance g.
  gt_boxes float32 [G, 4]: (y1, x1, y2, x2) on pixel edges — a component on
    rows r0…r1 has y1 = r0, y2 = r1 + 1 — the convention of
    `ich_jax.models.boxes` (pixel centres at i + 0.5). Zeros past the count.
  gt_subtypes int32 [G]: LABELS index (1–5) of each instance's subtype, 0 past the count.
  gt_count int32: how many instances are real.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ich_jax import LABELS

FIELDS = ("instance_map", "gt_boxes", "gt_subtypes", "gt_count")
_EIGHT = np.ones((3, 3), bool)


def from_mask(mask: np.ndarray, max_instances: int) -> dict[str, np.ndarray]:
  """The instances of one label map [H, W] (see the module doc)."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"instances.from_mask: mask of shape {mask.shape}; expected one slice [H, W]")
  if max_instances < 1 or max_instances > 255:
    raise ValueError(f"config data.instances={max_instances}: need 1–255 instances per slice (uint8 instance map)")
  found = []  # (pixels, subtype, component mask's slices, labelled array, label)
  for subtype in range(1, len(LABELS)):
    blood = mask == subtype
    if not blood.any():
      continue
    labelled, n = ndimage.label(blood, structure=_EIGHT)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    for label, where in enumerate(ndimage.find_objects(labelled), start=1):
      found.append((int(sizes[label]), subtype, where, labelled, label))
  # Largest first; ties by subtype then position, so the order never depends on dict or hash order.
  found.sort(key=lambda f: (-f[0], f[1], f[2][0].start, f[2][1].start))
  instance_map = np.zeros(mask.shape, np.uint8)
  boxes = np.zeros((max_instances, 4), np.float32)
  subtypes = np.zeros(max_instances, np.int32)
  for g, (_, subtype, (rows, cols), labelled, label) in enumerate(found[:max_instances]):
    instance_map[rows, cols][labelled[rows, cols] == label] = g + 1
    boxes[g] = (rows.start, cols.start, rows.stop, cols.stop)
    subtypes[g] = subtype
  return {"instance_map": instance_map, "gt_boxes": boxes, "gt_subtypes": subtypes,
          "gt_count": np.int32(min(len(found), max_instances))}


def add_to_example(example: dict, max_instances: int) -> dict:
  """`example` with the instance fields of its (already resized) `mask`; unchanged when `max_instances` is 0."""
  if not max_instances:
    return example
  if "mask" not in example:
    raise ValueError("config data.instances > 0 needs a dataset with hemorrhage masks (a `mask` field); this "
                     f"example has only {sorted(example)}")
  return {**example, **from_mask(example["mask"], max_instances)}
