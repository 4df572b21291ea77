"""The scanner: slice planes through the head (pose, pixel spacing, slice positions) and sub-slice sampling."""
from __future__ import annotations

import dataclasses

import numpy as np

from ich_jax.data.phantom.geometry import Plane

# Slices this thin (mm) or thinner are sampled once along z; thicker ones three times (partial volume).
THIN_SLICE_MM = 1.25


@dataclasses.dataclass(frozen=True)
class Scan:
  """Where the scanner's voxels lie in the head frame: matrix × matrix pixels of `spacing` mm, slices at `z`."""
  matrix: int
  spacing: float
  thickness: float
  z: np.ndarray           # slice centres, scanner z (mm)
  R: np.ndarray           # head -> scanner rotation
  center: np.ndarray      # scanner position of the head origin

  def plane(self, k: int) -> Plane:
    half = (self.matrix - 1) / 2.0
    s0 = np.array([-half * self.spacing, -half * self.spacing, self.z[k]])
    rt = self.R.T
    # Rows run along scanner y (posterior), columns along scanner x (patient left).
    return Plane(rt @ (s0 - self.center), rt @ np.array([0.0, self.spacing, 0.0]),
                 rt @ np.array([self.spacing, 0.0, 0.0]), rt @ np.array([0.0, 0.0, 1.0]),
                  (self.matrix, self.matrix))

  def to_scanner(self, p):
    return self.R @ np.asarray(p, np.float64) + self.center

  def to_head(self, s):
    return self.R.T @ (np.asarray(s, np.float64) - self.center)

  def snap(self, p):
    """The voxel centre nearest to head-frame point p (so a tiny bleed holds >= 1 voxel centre)."""
    s = self.to_scanner(p)
    half = (self.matrix - 1) / 2.0
    col = np.clip(np.round(s[0] / self.spacing + half), 0, self.matrix - 1)
    row = np.clip(np.round(s[1] / self.spacing + half), 0, self.matrix - 1)
    k = np.clip(np.round((s[2] - self.z[0]) / self.thickness), 0, len(self.z) - 1)
    return self.to_head(np.array([(col - half) * self.spacing, (row - half) * self.spacing,
                                  self.z[0] + k * self.thickness]))

  def slices_near(self, p, radius):
    """Indices of slices whose slab comes within `radius` of head-frame point p (pitch-safe)."""
    z = self.to_scanner(p)[2]
    reach = radius + self.thickness
    return [k for k in range(len(self.z)) if abs(self.z[k] - z) <= reach]


def sub_offsets(thickness: float):
  """Sub-slice sample offsets along z: 3 for thick slices, the centre sample first (the mask)."""
  if thickness <= THIN_SLICE_MM:
    return (0.0,)
  return (0.0, -thickness / 3.0, thickness / 3.0)
