"""Skull stripping: the brain mask of a head CT slice from Hounsfield units, by threshold and morphology.

Seed 000 (§2.1.4) builds its fourth input channel by applying "a 3D U-net model
developed in-house ... to strip the skull" to the brain-window image. That
model is not public, so the mask here is classical, per slice, in HU:

1. bone = HU ≥ `bone_hu`;
2. the bone is closed with a disk of `close_mm`, which bridges the gaps a
   slice through the skull base or a suture leaves in the ring, and the
   cranial cavity is what the closed ring encloses (holes of it);
3. brain = cavity pixels from `soft_hu` up to `dense_hu` (air in sinuses and
   mastoid cells drops out, and so does the partial-volume rim of bone along
   the inner table, 120–300 HU), opened with a disk of `open_mm` to cut the
   thin bridges to orbital and nasal tissue that reach through the skull
   base; the largest component is kept, and every other one of at least
   `keep_mm2` (on a skull-base slice the frontal lobes between the orbits and
   the temporal lobes beside the posterior fossa are separate pieces);
4. the opening's lost rim is given back within the tissue (a conditional
   dilation by `open_mm`), and holes are filled, so a bleed or a
   calcification inside the brain is brain.

Sizes are in millimetres, turned into pixels with the slice's pixel spacing,
so one setting serves 0.4 mm (native 512) and 1.8 mm (128) slices. The mask
covers everything inside the inner table: brain, CSF spaces, and extra-axial
blood (epidural, subdural), which the stripped channel must keep.

`brain_mask` is numpy/scipy, pure, one slice at a time; the channel recipe uses
it through `ich_jax.data.windows` (op "skull_stripped"), and segmentation
configs can train a small U-Net on its masks (`configs/skull_strip.py`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Cortical bone and the diploë are several hundred HU; blood stays below ~100
# and calcifications are filled back as holes in step 4.
BONE_HU = 300.0
# Above air and fat partial volume; CSF (0–15 HU) and its noise stay in.
SOFT_HU = -30.0
# Above acute blood (≤ ~100 HU); denser pixels inside the brain (calcifications) come back as holes.
DENSE_HU = 120.0
CLOSE_MM = 6.0
OPEN_MM = 3.0
KEEP_MM2 = 200.0
# Pixel spacing assumed when a slice comes without one (native head CT, ~0.45 mm).
DEFAULT_SPACING_MM = 0.45


def dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
  """Binary dilation by a Euclidean disk of `radius_px` (pixel centres within that distance of the mask).

  Through the distance transform, so the cost does not grow with the radius (a 6 mm disk is 14 pixels
  at 0.43 mm, where scipy's structuring-element morphology takes several times longer).
  """
  if radius_px <= 0 or not mask.any():
    return mask
  return ndimage.distance_transform_edt(~mask) <= radius_px


def erode(mask: np.ndarray, radius_px: float) -> np.ndarray:
  """Binary erosion by a Euclidean disk: pixels farther than `radius_px` from every background pixel
  (the frame's outside does not count as background)."""
  if radius_px <= 0 or mask.all():
    return mask
  return ndimage.distance_transform_edt(mask) > radius_px


def _spacing(pixel_spacing) -> float:
  if pixel_spacing is None:
    return DEFAULT_SPACING_MM
  sp = np.asarray(pixel_spacing, np.float64).ravel()
  if sp.size not in (1, 2) or not np.isfinite(sp).all() or (sp <= 0).any():
    raise ValueError(f"skull stripping: pixel_spacing={tuple(sp.tolist())} must be one or two positive mm values")
  return float(sp.mean())


def brain_mask(hu, pixel_spacing=None, *, bone_hu: float = BONE_HU, soft_hu: float = SOFT_HU,
               dense_hu: float = DENSE_HU, close_mm: float = CLOSE_MM, open_mm: float = OPEN_MM,
               keep_mm2: float = KEEP_MM2) -> np.ndarray:
  """bool [H, W]: the intracranial contents of one slice (see the module docstring); all False if none."""
  hu = np.asarray(hu, np.float32)
  if hu.ndim != 2:
    raise ValueError(f"brain_mask takes one slice [H, W]; got shape {hu.shape}")
  spacing = _spacing(pixel_spacing)
  bone = hu >= bone_hu
  if not bone.any():
    return np.zeros(hu.shape, bool)
  # Pad so that closing near the frame edge does not glue the ring to it.
  r_close, r_open = close_mm / spacing, open_mm / spacing
  pad = int(np.ceil(r_close)) + 1
  closed = erode(dilate(np.pad(bone, pad), r_close), r_close)[pad:-pad, pad:-pad]
  cavity = ndimage.binary_fill_holes(closed) & ~closed
  tissue = cavity & (hu >= soft_hu) & (hu < dense_hu)
  if not tissue.any():
    return np.zeros(hu.shape, bool)
  opened = dilate(erode(tissue, r_open), r_open)
  labels, n = ndimage.label(opened)
  if n == 0:
    return np.zeros(hu.shape, bool)
  sizes = ndimage.sum_labels(opened, labels, index=np.arange(1, n + 1))
  keep = np.flatnonzero((sizes >= keep_mm2 / spacing ** 2) | (sizes == sizes.max())) + 1
  brain = np.isin(labels, keep)
  brain = dilate(brain, r_open) & tissue
  return ndimage.binary_fill_holes(brain)


def strip(windowed, hu, pixel_spacing=None, **options) -> np.ndarray:
  """A windowed channel [H, W] with everything outside `brain_mask(hu)` set to 0 (the window's floor, air)."""
  return np.where(brain_mask(hu, pixel_spacing, **options), windowed, np.zeros_like(windowed))
