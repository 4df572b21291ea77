"""The head frame's geometry: slice planes, ellipsoids and their partial volume over a voxel."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# A layer's edge is blurred over the pixel plus this fraction of the slice thickness: a surface tilted through the
# slab crosses part of it (partial volume along z).
SLAB_BLUR = 0.35


@dataclasses.dataclass(frozen=True)
class Plane:
  """A pixel grid in the head frame: pixel (r, c) sits at origin + r*d_row + c*d_col."""
  origin: np.ndarray
  d_row: np.ndarray
  d_col: np.ndarray
  normal: np.ndarray     # unit; the slice's z direction
  shape: tuple[int, int]

  def sub(self, box) -> "Plane":
    r0, r1, c0, c1 = box
    return Plane(self.origin + r0 * self.d_row + c0 * self.d_col, self.d_row, self.d_col,
                 self.normal, (r1 - r0, c1 - c0))

  def shifted(self, dn: float) -> "Plane":
    return dataclasses.replace(self, origin=self.origin + dn * self.normal)

  def linear(self, v, const: float = 0.0) -> np.ndarray:
    """v . p + const on the grid: one broadcast add, the cheapest field there is."""
    v = np.asarray(v, np.float64)
    rows = np.arange(self.shape[0]) * (v @ self.d_row) + (v @ self.origin + const)
    cols = np.arange(self.shape[1]) * (v @ self.d_col)
    return rows.astype(np.float32)[:, None] + cols.astype(np.float32)[None, :]


def ramp(h, w):
  """Fraction of a voxel inside {h >= 0} when h changes by w across the voxel."""
  out = h * np.float32(1.0 / max(w, 1e-6))
  out += np.float32(0.5)
  return np.clip(out, 0.0, 1.0, out=out)


def paint(img, frac, hu):
  """Partial-volume blend: a fraction `frac` of each voxel becomes `hu`."""
  img += frac * (np.float32(hu) - img)


def rot_z(deg):
  t = math.radians(deg)
  return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg):
  t = math.radians(deg)
  return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])


@dataclasses.dataclass(frozen=True)
class Ell:
  """Ellipsoid {|M (p - center)| <= 1}; M = diag(1/semi) @ rot.T."""
  center: np.ndarray
  M: np.ndarray
  hu: float = 0.0


def ell(center, semi, yaw_deg=0.0, pitch_deg=0.0, hu=0.0) -> Ell:
  rot = rot_z(yaw_deg) @ rot_x(pitch_deg)
  return Ell(np.asarray(center, np.float64), np.diag(1.0 / np.asarray(semi, np.float64)) @ rot.T, hu)


def ell_boxes(plane: Plane, ells, thick: float):
  """Pixel box (r0, r1, c0, c1) of each ellipsoid's section through the slab, or None.

  Parallel sections of an ellipsoid are ellipses, largest through the centre, so
  the slab's two faces and the central section (when inside the slab) bound it.
  Vectorised over the ellipsoids: this runs for every structure on every slice.
  """
  M = np.stack([e.M for e in ells])                      # [n, 3, 3]
  centers = np.stack([e.center for e in ells])           # [n, 3]
  er, ec = M @ plane.d_row, M @ plane.d_col              # [n, 3]
  a00, a01, a11 = (er * er).sum(1), (er * ec).sum(1), (ec * ec).sum(1)
  det = a00 * a11 - a01 * a01
  i00, i01, i11 = a11 / det, -a01 / det, a00 / det      # inverse of the 2x2 quadratic form
  reach = (1.0 + 0.5 * (np.sqrt(a00) + np.sqrt(a11))) ** 2   # + the ramp's outer half
  dist = (centers - plane.origin) @ plane.normal
  lo = np.full((len(ells), 2), np.inf)
  hi = np.full((len(ells), 2), -np.inf)
  faces = (np.full(len(ells), -0.5 * thick), np.full(len(ells), 0.5 * thick))
  for dn in faces + (np.clip(dist, -0.5 * thick, 0.5 * thick),):
    q0 = np.einsum("nij,nj->ni", M, plane.origin + dn[:, None] * plane.normal - centers)
    b0, b1 = (q0 * er).sum(1), (q0 * ec).sum(1)
    m0, m1 = -(i00 * b0 + i01 * b1), -(i01 * b0 + i11 * b1)
    k = reach - ((q0 * q0).sum(1) - (b0 * (i00 * b0 + i01 * b1) + b1 * (i01 * b0 + i11 * b1)))
    ok = k > 0
    kk = np.where(ok, k, 0.0)
    hr, hc = np.sqrt(kk * i00), np.sqrt(kk * i11)
    lo = np.where(ok[:, None], np.minimum(lo, np.stack([m0 - hr, m1 - hc], 1)), lo)
    hi = np.where(ok[:, None], np.maximum(hi, np.stack([m0 + hr, m1 + hc], 1)), hi)
  boxes = []
  for (l0, l1), (h0, h1) in zip(lo, hi):
    if not np.isfinite(l0):
      boxes.append(None)
      continue
    r0, c0 = max(int(np.floor(l0)) - 1, 0), max(int(np.floor(l1)) - 1, 0)
    r1, c1 = min(int(np.ceil(h0)) + 2, plane.shape[0]), min(int(np.ceil(h1)) + 2, plane.shape[1])
    boxes.append((r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None)
  return boxes


def ell_box(plane: Plane, e: Ell, thick: float):
  return ell_boxes(plane, [e], thick)[0]


def ell_fraction(plane: Plane, e: Ell, thick: float):
  """(fraction, centre-inside) of the ellipsoid over a voxel slab `thick` mm deep.

  The ramp width is the change of the normalised radius across the voxel,
  |grad rho| summed over row, column and the slab thickness.
  """
  er, ec, en = e.M @ plane.d_row, e.M @ plane.d_col, e.M @ plane.normal
  q0 = e.M @ (plane.origin - e.center)
  r = np.arange(plane.shape[0], dtype=np.float64)
  c = np.arange(plane.shape[1], dtype=np.float64)

  def lin(v0, vr, vc):
    return (v0 + r * vr).astype(np.float32)[:, None] + (c * vc).astype(np.float32)[None, :]

  rho2 = None
  for i in range(3):
    qi = lin(q0[i], er[i], ec[i])
    rho2 = qi * qi if rho2 is None else rho2 + qi * qi
  rho = np.sqrt(rho2)
  w = np.abs(lin(q0 @ er, er @ er, ec @ er))
  w += np.abs(lin(q0 @ ec, er @ ec, ec @ ec))
  w += np.float32(thick) * np.abs(lin(q0 @ en, er @ en, ec @ en))
  w /= np.maximum(rho, np.float32(1e-3))
  np.maximum(w, np.float32(1e-4), out=w)
  frac = (np.float32(1.0) - rho) / w
  frac += np.float32(0.5)
  np.clip(frac, 0.0, 1.0, out=frac)
  return frac, rho <= 1.0


def union(plane: Plane, ells, thick: float):
  """Union (max) of ellipsoid fractions: (box, fraction, centre-inside) over the union box, or None."""
  parts = [(box, e) for box, e in zip(ell_boxes(plane, ells, thick), ells) if box is not None]
  if not parts:
    return None
  ub = (min(p[0][0] for p in parts), max(p[0][1] for p in parts),
        min(p[0][2] for p in parts), max(p[0][3] for p in parts))
  frac = np.zeros((ub[1] - ub[0], ub[3] - ub[2]), np.float32)
  inside = np.zeros(frac.shape, bool)
  for (r0, r1, c0, c1), e in parts:
    f, m = ell_fraction(plane.sub((r0, r1, c0, c1)), e, thick)
    sl = (slice(r0 - ub[0], r1 - ub[0]), slice(c0 - ub[2], c1 - ub[2]))
    np.maximum(frac[sl], f, out=frac[sl])
    inside[sl] |= m
  return ub, frac, inside


def embed(shape, patch):
  """A union patch as a full-plane array (zeros outside), for products of fields."""
  frac = np.zeros(shape, np.float32)
  inside = np.zeros(shape, bool)
  if patch is not None:
    (r0, r1, c0, c1), f, m = patch
    frac[r0:r1, c0:c1] = f
    inside[r0:r1, c0:c1] = m
  return frac, inside
