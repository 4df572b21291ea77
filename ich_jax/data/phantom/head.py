"""The head: size, tissue densities, gyral pattern, the deep structures, and the fields every layer is keyed on."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ich_jax.data.phantom.geometry import Plane, ell


@dataclasses.dataclass(frozen=True)
class Head:
  """One head: its size (the inner table's semi-axes), layers, tissue densities and gyral pattern."""
  a: float                              # inner-table semi-axes, mm: left-right,
  b: float                              # anterior-posterior,
  c: float                              # and up from the vault's centre
  skull_mm: float
  scalp_mm: float
  outer_table_mm: float
  inner_table_mm: float
  bone_hu: float                        # cortical bone of both tables
  diploe_hu: float
  skin_hu: float
  fat_hu: float
  soft_hu: float                        # galea, muscle, the soft tissue under the skull base
  wm_hu: float
  gm_hu: float
  deep_gm_hu: float                     # basal ganglia, thalami
  stem_hu: float
  csf_hu: float
  falx_hu: float                        # falx, tentorium and sagittal sinus when not dense
  falx_mm: float
  tentorium_hu: float
  csf_mm: float                         # subarachnoid CSF over the convexity (grows with atrophy)
  sulcus_hw_mm: float                   # sulcal half-width at the surface (grows with atrophy)
  sulcus_depth_mm: float
  gm_mm: float                          # cortical ribbon
  vent_scale: float                     # ventricular size (grows with atrophy)
  waves: np.ndarray                     # [4, 3] unit directions of the gyral plane waves
  wave_k: np.ndarray                    # [4] radians per unit of normalised direction
  wave_phase: np.ndarray
  wave_twist: np.ndarray                # radians per mm of depth
  cupping_hu: float                     # beam hardening: brain near the inner table reads denser

  @property
  def r_mean(self) -> float:
    return (self.a + self.b + self.c) / 3.0

  @property
  def abc(self) -> np.ndarray:
    return np.array([self.a, self.b, self.c])


ZCLAMP = 0.6   # below z = -0.6c the vault wall is vertical (the occipital bone around the posterior fossa)
FLOOR_TOP = -0.30   # highest point of the cranial floor (anterior fossa), normalised z


def draw_head(rng, scale_limit: float) -> Head:
  """Size, tissue densities and the gyral pattern of one head."""
  a, b, c = rng.uniform(60, 68), rng.uniform(76, 86), rng.uniform(64, 74)
  skull, scalp = rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
  s = min(1.0, scale_limit / (b + skull + scalp))
  wm = rng.uniform(22, 31)
  gm = min(wm + rng.uniform(8, 14), 45.0)
  atrophy = rng.uniform(0, 1)
  waves = rng.normal(size=(4, 3))
  waves /= np.linalg.norm(waves, axis=1, keepdims=True)
  r_mean = s * (a + b + c) / 3
  return Head(
      a=s * a, b=s * b, c=s * c, skull_mm=s * skull, scalp_mm=s * scalp,
      outer_table_mm=rng.uniform(1.2, 2.2), inner_table_mm=rng.uniform(1.0, 1.8),
      bone_hu=rng.uniform(1000, 1800), diploe_hu=rng.uniform(300, 600),
      skin_hu=rng.uniform(35, 50), fat_hu=rng.uniform(-110, -70), soft_hu=rng.uniform(30, 45),
      wm_hu=wm, gm_hu=gm, deep_gm_hu=gm - rng.uniform(0, 3), stem_hu=wm + rng.uniform(2, 5),
      csf_hu=rng.uniform(0, 10),
      falx_hu=rng.uniform(38, 48), falx_mm=rng.uniform(0.8, 1.4), tentorium_hu=rng.uniform(38, 48),
      csf_mm=0.8 + 2.4 * atrophy, sulcus_hw_mm=0.35 + 1.0 * atrophy,
      sulcus_depth_mm=rng.uniform(12, 20), gm_mm=rng.uniform(2.5, 3.5),
      vent_scale=0.75 + 0.6 * atrophy + rng.uniform(-0.05, 0.15),
      waves=waves,
      # Sulci ~ every 8-14 mm over the convexity: wavelength 18-28 mm at the surface.
      wave_k=2 * math.pi * r_mean / rng.uniform(18, 28, size=4),
      wave_phase=rng.uniform(0, 2 * math.pi, size=4),
      wave_twist=rng.uniform(-0.08, 0.08, size=4),
      cupping_hu=rng.uniform(0, 8))


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """The deep structures of a head as ellipsoids, by kind."""
  ventricles: tuple
  cisterns: tuple
  brainstem: tuple
  deep_grey: tuple
  face_fat: tuple      # orbital fat (below the floor only)
  globes: tuple
  air_cells: tuple     # sphenoid and ethmoid sinuses, mastoid air cells


def anatomy(head: Head) -> Anatomy:
  """Deep structures as ellipsoids; positions in units of the inner-table semi-axes."""
  a, b, c, vs = head.a, head.b, head.c, head.vent_scale

  def at(x, y, z):
    return (x * a, y * b, z * c)

  vents = []
  for side in (-1, 1):
    body_x = max(0.13 * a, 0.10 * a * vs + 1.3)   # keep a septum pellucidum
    vents += [
        ell((side * body_x, -0.02 * b, 0.27 * c), (0.10 * a * vs, 0.32 * b, 0.10 * c * vs), -side * 6),
        ell((side * (0.15 * a + 0.02 * a * vs), -0.33 * b, 0.16 * c), (0.10 * a * vs, 0.14 * b, 0.13 * c * vs),
            side * 12),
        ell((side * (0.27 * a + 0.03 * a * vs), 0.30 * b, 0.12 * c), (0.11 * a * vs, 0.12 * b, 0.14 * c * vs)),
        # Occipital horns: the dependent part when supine, where blood layers.
        ell((side * (0.25 * a + 0.03 * a * vs), 0.50 * b, 0.08 * c), (0.06 * a * vs, 0.14 * b, 0.07 * c * vs),
            -side * 10),
        ell((side * 0.44 * a, -0.12 * b, -0.24 * c), (0.05 * a * vs, 0.16 * b, 0.05 * c * vs), side * 8),
    ]
  vents += [ell(at(0, -0.02, -0.07), (0.035 * a * vs, 0.14 * b, 0.15 * c)),
            ell(at(0, 0.34, -0.55), (0.10 * a, 0.05 * b * vs, 0.11 * c))]
  cisterns = [
      ell(at(0, -0.12, -0.30), (0.20 * a, 0.12 * b, 0.06 * c)),      # suprasellar
      ell(at(0, 0.08, -0.27), (0.26 * a, 0.22 * b, 0.10 * c)),       # perimesencephalic (around the midbrain)
      ell(at(0, 0.26, -0.20), (0.12 * a, 0.07 * b, 0.08 * c)),       # quadrigeminal
      ell(at(0, -0.03, -0.52), (0.13 * a, 0.05 * b, 0.18 * c)),      # prepontine
      ell(at(0, 0.85, -0.85), (0.14 * a, 0.10 * b, 0.10 * c)),       # cisterna magna
  ]
  for side in (-1, 1):   # Sylvian fissures: lateral surface to the suprasellar cistern, anteromedially
    cisterns.append(ell((side * 0.62 * a, -0.14 * b, -0.12 * c), (0.36 * a, 0.035 * b, 0.13 * c), side * 22))
  brainstem = [ell(at(0, 0.06, -0.27), (0.17 * a, 0.15 * b, 0.13 * c)),    # midbrain
               ell(at(0, 0.13, -0.52), (0.21 * a, 0.16 * b, 0.16 * c)),    # pons
               ell(at(0, 0.18, -0.82), (0.14 * a, 0.12 * b, 0.18 * c))]    # medulla
  deep = []
  for side in (-1, 1):
    deep += [ell((side * 0.27 * a, -0.26 * b, 0.18 * c), (0.08 * a, 0.10 * b, 0.12 * c)),   # caudate head
             ell((side * 0.36 * a, -0.05 * b, 0.0), (0.08 * a, 0.17 * b, 0.12 * c), side * 8),   # lentiform
             ell((side * 0.14 * a, 0.11 * b, 0.03 * c), (0.12 * a, 0.13 * b, 0.12 * c))]   # thalamus
  fat, globes, air = [], [], []
  for side in (-1, 1):
    fat.append(ell((side * 0.42 * a, -0.74 * b, -0.50 * c), (0.30 * a, 0.22 * b, 0.17 * c), -side * 15))
    globes.append(ell((side * 0.45 * a, -0.80 * b, -0.50 * c), (11.5, 11.5, 11.5)))
    air.append(ell((side * 0.80 * a, 0.12 * b, -0.62 * c), (0.12 * a, 0.10 * b, 0.12 * c)))   # mastoid
  air += [ell(at(0, -0.22, -0.52), (0.22 * a, 0.14 * b, 0.12 * c)),     # sphenoid sinus
          ell(at(0, -0.68, -0.45), (0.12 * a, 0.18 * b, 0.12 * c))]     # ethmoid cells
  return Anatomy(tuple(vents), tuple(cisterns), tuple(brainstem), tuple(deep), tuple(fat), tuple(globes),
                 tuple(air))


def _floor(xn, yn):
  """Cranial floor (normalised z), posterior-fossa weight and skull-base bone thickness (mm) at (xn, yn).

  Anterior fossa high (thin orbital roofs), the sella and middle fossae lower,
  the posterior fossa lowest, behind petrous pyramids that run posterolaterally
  from the apex and stand above both fossae.
  """
  ax = np.abs(xn)
  mid = np.float32(-0.36) - np.float32(0.26) * np.clip((ax - 0.16) * np.float32(1 / 0.14), 0.0, 1.0)
  # Sphenoid wings: the anterior fossa's back edge, a V from the anterior clinoids out to the pterion.
  t1 = np.clip((yn + np.float32(0.22) + np.float32(0.38) * ax) * np.float32(1 / 0.06), 0.0, 1.0)
  floor = np.float32(-0.30) + (mid + np.float32(0.30)) * t1
  ridge = np.float32(-0.06) + np.float32(0.35) * np.maximum(ax - 0.2, 0.0)
  post = np.clip((yn - ridge) * np.float32(1 / 0.10), 0.0, 1.0)
  floor += (np.float32(-0.97) - floor) * post
  petrous = np.clip(1.0 - np.abs(yn - ridge) * np.float32(1 / 0.09), 0.0, 1.0)
  petrous *= np.clip((ax - 0.2) * np.float32(10.0), 0.0, 1.0)
  floor += np.float32(0.12) * np.minimum(petrous * np.float32(1.6), 1.0)
  plate = np.float32(2.5) + np.float32(3.0) * post + np.float32(24.0) * petrous
  return floor, post, plate


def tentorium(xn, yn):
  """Tentorium height (normalised z): peaks at the straight sinus, slopes to the petrous ridges and occiput."""
  return np.float32(-0.10) - np.float32(0.40) * np.abs(xn) - np.float32(0.6) * (yn - 0.35) ** 2


def falx_edge(yn):
  """Lower free edge of the falx (normalised z): above the corpus callosum, lower front and back."""
  return np.float32(0.42) - np.float32(0.62) * yn * yn


@dataclasses.dataclass
class Fields:
  """Head-frame fields on a plane's pixels: normalised coordinates, radius, depth under the brain surface."""
  xn: np.ndarray
  yn: np.ndarray
  zn: np.ndarray
  rho: np.ndarray        # normalised radius of the inner-table ellipsoid (vertical wall below -ZCLAMP)
  depth: np.ndarray      # mm below the nearest brain surface: inner table, midline fissure, cranial floor
  dz: np.ndarray | None  # mm above the cranial floor (None above the floor's top)
  post: np.ndarray | None
  plate: np.ndarray | None   # skull-base bone thickness under the floor, mm

  @property
  def intracranial(self):
    inside = self.rho <= 1.0
    if self.dz is not None:
      inside &= self.dz >= 0
    return inside


def fields(plane: Plane, head: Head, band=None) -> Fields:
  """Head-frame fields every layer is keyed on; `band` limits the midline work to those columns."""
  xn = plane.linear(np.array([1.0, 0, 0]) / head.a)
  yn = plane.linear(np.array([0, 1.0, 0]) / head.b)
  zn = plane.linear(np.array([0, 0, 1.0]) / head.c)
  zc = np.maximum(zn, np.float32(-ZCLAMP))
  rho = np.sqrt(xn * xn + yn * yn + zc * zc)
  depth = (np.float32(1.0) - rho) * np.float32(head.r_mean)
  c0, c1 = (0, plane.shape[1]) if band is None else band
  if c1 > c0:
    # Medial surface: the hemispheres face each other across the fissure, down to the falx's free edge.
    med = np.abs(xn[:, c0:c1]) * np.float32(head.a)
    med += np.maximum(falx_edge(yn[:, c0:c1]) - zn[:, c0:c1], 0.0) * np.float32(4 * head.c)
    np.minimum(depth[:, c0:c1], med, out=depth[:, c0:c1])
  dz = post = plate = None
  if float(zn.min()) < FLOOR_TOP + 0.02:
    floor, post, plate = _floor(xn, yn)
    dz = (zn - floor) * np.float32(head.c)
    np.minimum(depth, dz, out=depth)
  return Fields(xn, yn, zn, rho, depth, dz, post, plate)


def dcsf(plane: Plane, head: Head, fl: Fields, widen: float = 0.0):
  """Signed distance (mm) to CSF: the convexity layer, sulci, fissure and basal surface (< 0 inside CSF)."""
  inv = np.float32(1.0) / np.maximum(fl.rho, np.float32(1e-3))
  g = first = None
  for v, k, ph, tw in zip(head.waves, head.wave_k, head.wave_phase, head.wave_twist):
    # Waves on the unit sphere of directions: their zero set is a set of radial
    # sheets (sulci run inward from the surface); a depth-dependent phase bends them.
    arg = plane.linear(k * v / head.abc) * inv
    arg += fl.depth * np.float32(tw) + np.float32(ph)
    term = np.sin(arg, out=arg)
    if g is None:
      g, first = term, term.copy()
    else:
      g += term
  k_eff = float(np.sqrt(np.sum(head.wave_k ** 2) / 2.0)) / head.r_mean
  s = np.abs(g, out=g)
  s *= fl.rho
  s *= np.float32(1.0 / k_eff)                   # ~ mm to the sulcus's axis
  # Sulci narrow to their fundus, at a depth that varies over the surface.
  hw = head.sulcus_hw_mm + widen
  fundus = np.float32(head.sulcus_depth_mm) * (np.float32(0.75) + np.float32(0.3) * first)
  s += fl.depth * np.float32(hw) / fundus - np.float32(hw)
  np.maximum(s, fl.depth - fundus, out=s)        # past the fundus: plain distance to it
  return np.minimum(s, fl.depth - np.float32(head.csf_mm + widen), out=s)
