import numpy as np
from scipy import ndimage

from ich_jax.eval import baseline


def _head(size=64):
  yy, xx = np.mgrid[:size, :size]
  r = np.hypot(yy - size / 2, xx - size / 2)
  hu = np.full((size, size), -1000, np.int16)
  hu[r < 28] = 1200          # skull
  hu[r < 24] = 35            # brain
  return hu, r


def test_intracranial_mask_is_inside_the_skull_minus_a_rim():
  hu, r = _head()
  inside = baseline.intracranial_mask(hu)
  assert inside[32, 32] and not inside[0, 0] and not inside[(r > 24) & (r < 28)].any()
  bone = hu > 300
  touching_bone = ndimage.binary_dilation(bone) & ~bone
  assert touching_bone.sum() > 50 and not inside[touching_bone].any()  # partial-volume rim dropped
  assert inside[r < 22].all()


def test_bright_fraction_counts_blood_density_only_inside():
  hu, r = _head()
  hu[30:34, 30:35] = 70      # 20 pixels of acute blood
  hu[2:6, 2:6] = 70          # outside the head: ignored
  inside = baseline.intracranial_mask(hu)
  assert baseline.bright_fraction(hu) == 20 / inside.sum()
  hu[30:34, 30:35] = 120     # calcification density: not blood
  assert baseline.bright_fraction(hu) == 0.0


def test_open_skull_ring_falls_back_to_soft_tissue():
  hu, r = _head()
  hu[:, 30:34][hu[:, 30:34] == 1200] = 35  # a gap in the ring (skull base)
  inside = baseline.intracranial_mask(hu)
  assert inside[32, 32] and inside.sum() > 0.5 * (r < 24).sum()
