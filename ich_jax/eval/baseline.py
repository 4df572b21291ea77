"""A no-learning baseline: how much of the intracranial space is as dense as acute blood.

It sets the bar a learned model must clear on the same split: if counting
50–90 HU pixels detected hemorrhage as well as the CNN, the data would be too
easy to say anything about the model.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Acute blood is about 50–90 HU (seed 000 and 003 windows centre on it).
BLOOD_HU = (50.0, 90.0)


def intracranial_mask(hu: np.ndarray, *, bone_hu: float = 300.0, margin: int = 1) -> np.ndarray:
  """Pixels enclosed by the skull on one slice, minus a `margin`-pixel rim.

  Bone is HU > `bone_hu`; the intracranial space is the holes of the bone mask.
  The rim is removed because partial volume between skull and brain produces
  intermediate densities that are not blood. A slice whose skull ring is open
  (skull base) falls back to the largest soft-tissue component inside the head.
  """
  hu = np.asarray(hu, np.float32)
  bone = hu > bone_hu
  inside = ndimage.binary_fill_holes(bone) & ~bone
  if not inside.any():
    soft = (hu > -100) & (hu <= bone_hu)
    labels, n = ndimage.label(soft)
    if n == 0:
      return np.zeros(hu.shape, bool)
    sizes = ndimage.sum_labels(soft, labels, index=np.arange(1, n + 1))
    inside = labels == (1 + int(np.argmax(sizes)))
  if margin:
    inside = ndimage.binary_erosion(inside, iterations=margin)
  return inside


def bright_fraction(hu: np.ndarray, *, lo: float = BLOOD_HU[0], hi: float = BLOOD_HU[1]) -> float:
  """Fraction of intracranial pixels with lo <= HU <= hi (0 when no intracranial pixel)."""
  inside = intracranial_mask(hu)
  n = int(inside.sum())
  if n == 0:
    return 0.0
  values = np.asarray(hu)[inside]
  return float(((values >= lo) & (values <= hi)).sum() / n)
