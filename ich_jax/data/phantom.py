"""Synthetic head CT studies in Hounsfield units, with per-subtype hemorrhage masks.

`make_phantom(seed, spec)` is deterministic in (seed, spec). The head is built in
a head frame (mm; x = patient left, y = posterior, z = superior, origin at the
centre of the cranial vault) and cut by the scanner's slice planes, which carry
an in-plane rotation, a slight pitch and an in-plane offset. Everything is an
analytic field evaluated per slice, in float32:

* the concentric layers (skin, fat, outer table, diploë, inner table, the
  intracranial boundary) are functions of one normalised ellipsoidal radius,
  looked up in a per-slice table that is box-filtered over the voxel footprint
  (pixel size in-plane, slice thickness along z): partial volume without
  supersampling, and a skull cut tangentially near the vertex blurs as it should;
* the cortex is a distance-to-CSF field: sulci are the zero set of a few plane
  waves on the unit sphere, so they run radially from the surface like real
  sulci; the grey ribbon lines the surface, the sulci, the interhemispheric
  fissure and the skull base;
* deep structures (ventricles, cisterns, nuclei, brainstem, calcifications) are
  ellipsoids evaluated only inside their bounding boxes, their partial volume
  taken from the field's gradient over the voxel;
* bleeds are rendered before the slices, in their own bounding boxes, averaged
  over 1 (thin slices) or 3 sub-slice samples; the mask is the centre sample
  (voxel centre inside the bleed), so labels, masks and volumes agree exactly.

Why a density threshold must not solve it (the quickstart's no-learning
baseline counts 50–90 HU pixels): noise and calibration vary per study; normal
anatomy reaches 50–90 HU (calcification rims, a dense falx, tentorium and
sagittal sinus, beam hardening at the skull base, partial volume with bone);
and many bleeds are small, thin or near-isodense. Shape and location stay
learnable: lens vs crescent against the inner table, blood-filled sulci and
cisterns, a fluid level in the occipital horns, a blob in the parenchyma.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

SUBTYPE_ORDER = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
# Seed 001's size bins live with the other statistics; re-exported for callers of this module.
from ich_jax.eval.metrics import SIZE_BINS, size_bin  # noqa: E402  (one definition of the bins)

# Volume range (mL) a bleed's target is drawn from, log-uniform, per size bin
# (seed 001's bins: punctate < 0.01, small 0.01–5, medium 5–25, large > 25 mL).
# The reported bin comes from the volume actually rendered, not this target.
_BIN_TARGET_ML = {"punctate": (0.002, 0.008), "small": (0.02, 4.5), "medium": (5.5, 24.0),
                  "large": (27.0, 85.0)}

# Seed 001 Table 1 (cross-validation cohort, 901 hemorrhages in 10,159 exams):
# counts per size bin (punctate, small, medium, large) for IPH 15/63/88/192,
# EDH/SDH 3/49/79/188, SAH 34/52/53/85. IVH has no row there; it takes the
# pooled mix of the three (52/164/220/465). In SUBTYPE_ORDER.
SEED001_SIZE_MIX = ((3, 49, 79, 188), (15, 63, 88, 192), (52, 164, 220, 465), (34, 52, 53, 85),
                    (3, 49, 79, 188))


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
  """The ranges a study is drawn from; a builder config picks one."""
  matrix: int = 512                                     # in-plane pixels (H = W = matrix)
  pixel_spacing_mm: tuple[float, float] = (0.4, 0.5)    # uniform range, square pixels; the head must fit the FOV
  slice_thickness_mm: tuple[float, ...] = (0.625, 1.25, 2.5, 5.0)   # choices; slice gap == thickness
  max_slices: int = 32                                  # covers min(head height, max_slices * thickness)
  p_hemorrhage: float = 0.5                             # P(study has >= 1 bleed)
  subtype_probs: tuple[float, ...] = (0.14, 0.26, 0.14, 0.20, 0.26)   # per bleed, SUBTYPE_ORDER
  p_extra_bleed: float = 0.3                            # P(one more bleed), repeated up to max_bleeds
  max_bleeds: int = 3
  size_bin_probs: tuple[float, ...] = (0.06, 0.40, 0.32, 0.22)   # punctate, small, medium, large
  # Per subtype (5 rows in SUBTYPE_ORDER, each like size_bin_probs, any scale);
  # None: every subtype uses size_bin_probs. SEED001_SIZE_MIX is the seed 001 cohort's.
  size_bin_probs_by_subtype: tuple[tuple[float, ...], ...] | None = None
  p_isodense_subdural: float = 0.3                      # thin (2–4 mm), 45–55 HU subdurals
  p_edema: float = 0.6                                  # hypodense rim around an intraparenchymal bleed
  noise_sd_hu: tuple[float, float] = (3.0, 7.0)          # per study, uniform, at 5 mm slices; pixel sd, correlated
                                                        # over ~1 mm; scaled by sqrt(5 mm / thickness) (see noise_sd)
  hu_offset: tuple[float, float] = (-3.0, 4.0)          # per-study calibration drift, uniform
  p_pineal_calcification: float = 0.5
  p_choroid_calcification: float = 0.5
  p_basal_ganglia_calcification: float = 0.1
  p_dense_falx: float = 0.3                             # falx + sagittal sinus at 55–80 HU
  p_dense_tentorium: float = 0.25
  p_beam_hardening: float = 0.6                         # raised HU and streaks in the posterior fossa
  max_rotation_deg: float = 12.0                        # in-plane (yaw), uniform +-
  max_pitch_deg: float = 6.0                            # about the left-right axis, uniform +-


@dataclasses.dataclass
class Phantom:
  hu: np.ndarray                 # int16 [S, H, W]
  masks: np.ndarray              # bool [5, S, H, W], SUBTYPE_ORDER; voxel centre inside the bleed
  slice_labels: np.ndarray       # float32 [S, 6]: "any", then SUBTYPE_ORDER
  blood_ml: np.ndarray           # float64 [5]: mask voxels * voxel volume, per subtype
  pixel_spacing_mm: tuple[float, float]   # (row, col)
  slice_thickness_mm: float
  z_positions_mm: np.ndarray     # float64 [S], increasing, spacing == thickness
  bleeds: list[dict]             # one per rendered bleed: subtype, volume_ml (its own mask), size_bin,
                                 # center_mm (x col, y row from the image centre; z as z_positions_mm),
                                 # center_index (slice, row, col), hu, site, and shape parameters
  mimics: list[str]              # mimics visible on >= 1 slice, in MIMICS order
  mimic_slices: np.ndarray       # bool [S]: slice shows a calcification, dense falx/tentorium or beam hardening
  intracranial: np.ndarray       # bool [S, H, W]: voxel centre inside the inner table, above the skull base
  ventricles: np.ndarray         # bool [S, H, W]: voxel centre inside the ventricular system

  @property
  def total_blood_ml(self) -> float:
    """Volume of the union of the subtype masks (overlaps counted once)."""
    voxels = int(np.count_nonzero(self.masks.any(axis=0)))
    return voxels * _voxel_ml(self.pixel_spacing_mm, self.slice_thickness_mm)


def _voxel_ml(pixel_spacing_mm, gap_mm) -> float:
  return pixel_spacing_mm[0] * pixel_spacing_mm[1] * gap_mm / 1000.0


# --- Geometry ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plane:
  """A pixel grid in the head frame: pixel (r, c) sits at origin + r*d_row + c*d_col."""
  origin: np.ndarray
  d_row: np.ndarray
  d_col: np.ndarray
  normal: np.ndarray     # unit; the slice's z direction
  shape: tuple[int, int]

  def sub(self, box) -> "_Plane":
    r0, r1, c0, c1 = box
    return _Plane(self.origin + r0 * self.d_row + c0 * self.d_col, self.d_row, self.d_col,
                  self.normal, (r1 - r0, c1 - c0))

  def shifted(self, dn: float) -> "_Plane":
    return dataclasses.replace(self, origin=self.origin + dn * self.normal)

  def linear(self, v, const: float = 0.0) -> np.ndarray:
    """v . p + const on the grid: one broadcast add, the cheapest field there is."""
    v = np.asarray(v, np.float64)
    rows = np.arange(self.shape[0]) * (v @ self.d_row) + (v @ self.origin + const)
    cols = np.arange(self.shape[1]) * (v @ self.d_col)
    return rows.astype(np.float32)[:, None] + cols.astype(np.float32)[None, :]


def _ramp(h, w):
  """Fraction of a voxel inside {h >= 0} when h changes by w across the voxel."""
  out = h * np.float32(1.0 / max(w, 1e-6))
  out += np.float32(0.5)
  return np.clip(out, 0.0, 1.0, out=out)


def _paint(img, frac, hu):
  """Partial-volume blend: a fraction `frac` of each voxel becomes `hu`."""
  img += frac * (np.float32(hu) - img)


def _rot_z(deg):
  t = math.radians(deg)
  return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg):
  t = math.radians(deg)
  return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])


@dataclasses.dataclass(frozen=True)
class _Ell:
  """Ellipsoid {|M (p - center)| <= 1}; M = diag(1/semi) @ rot.T."""
  center: np.ndarray
  M: np.ndarray
  hu: float = 0.0


def _ell(center, semi, yaw_deg=0.0, pitch_deg=0.0, hu=0.0) -> _Ell:
  rot = _rot_z(yaw_deg) @ _rot_x(pitch_deg)
  return _Ell(np.asarray(center, np.float64), np.diag(1.0 / np.asarray(semi, np.float64)) @ rot.T, hu)


def _ell_boxes(plane: _Plane, ells, thick: float):
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


def _ell_box(plane: _Plane, e: _Ell, thick: float):
  return _ell_boxes(plane, [e], thick)[0]


def _ell_fraction(plane: _Plane, e: _Ell, thick: float):
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


def _union(plane: _Plane, ells, thick: float):
  """Union (max) of ellipsoid fractions: (box, fraction, centre-inside) over the union box, or None."""
  parts = [(box, e) for box, e in zip(_ell_boxes(plane, ells, thick), ells) if box is not None]
  if not parts:
    return None
  ub = (min(p[0][0] for p in parts), max(p[0][1] for p in parts),
        min(p[0][2] for p in parts), max(p[0][3] for p in parts))
  frac = np.zeros((ub[1] - ub[0], ub[3] - ub[2]), np.float32)
  inside = np.zeros(frac.shape, bool)
  for (r0, r1, c0, c1), e in parts:
    f, m = _ell_fraction(plane.sub((r0, r1, c0, c1)), e, thick)
    sl = (slice(r0 - ub[0], r1 - ub[0]), slice(c0 - ub[2], c1 - ub[2]))
    np.maximum(frac[sl], f, out=frac[sl])
    inside[sl] |= m
  return ub, frac, inside


def _embed(shape, patch):
  """A union patch as a full-plane array (zeros outside), for products of fields."""
  frac = np.zeros(shape, np.float32)
  inside = np.zeros(shape, bool)
  if patch is not None:
    (r0, r1, c0, c1), f, m = patch
    frac[r0:r1, c0:c1] = f
    inside[r0:r1, c0:c1] = m
  return frac, inside


# --- The head ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Head:
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


_ZCLAMP = 0.6   # below z = -0.6c the vault wall is vertical (the occipital bone around the posterior fossa)
_FLOOR_TOP = -0.30   # highest point of the cranial floor (anterior fossa), normalised z


def _draw_head(rng, scale_limit: float) -> _Head:
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
  return _Head(
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
class _Anatomy:
  ventricles: tuple
  cisterns: tuple
  brainstem: tuple
  deep_grey: tuple
  face_fat: tuple      # orbital fat (below the floor only)
  globes: tuple
  air_cells: tuple     # sphenoid and ethmoid sinuses, mastoid air cells


def _anatomy(head: _Head) -> _Anatomy:
  """Deep structures as ellipsoids; positions in units of the inner-table semi-axes."""
  a, b, c, vs = head.a, head.b, head.c, head.vent_scale

  def at(x, y, z):
    return (x * a, y * b, z * c)

  vents = []
  for side in (-1, 1):
    body_x = max(0.13 * a, 0.10 * a * vs + 1.3)   # keep a septum pellucidum
    vents += [
        _ell((side * body_x, -0.02 * b, 0.27 * c), (0.10 * a * vs, 0.32 * b, 0.10 * c * vs), -side * 6),
        _ell((side * (0.15 * a + 0.02 * a * vs), -0.33 * b, 0.16 * c), (0.10 * a * vs, 0.14 * b, 0.13 * c * vs),
             side * 12),
        _ell((side * (0.27 * a + 0.03 * a * vs), 0.30 * b, 0.12 * c), (0.11 * a * vs, 0.12 * b, 0.14 * c * vs)),
        # Occipital horns: the dependent part when supine, where blood layers.
        _ell((side * (0.25 * a + 0.03 * a * vs), 0.50 * b, 0.08 * c), (0.06 * a * vs, 0.14 * b, 0.07 * c * vs),
             -side * 10),
        _ell((side * 0.44 * a, -0.12 * b, -0.24 * c), (0.05 * a * vs, 0.16 * b, 0.05 * c * vs), side * 8),
    ]
  vents += [_ell(at(0, -0.02, -0.07), (0.035 * a * vs, 0.14 * b, 0.15 * c)),
            _ell(at(0, 0.34, -0.55), (0.10 * a, 0.05 * b * vs, 0.11 * c))]
  cisterns = [
      _ell(at(0, -0.12, -0.30), (0.20 * a, 0.12 * b, 0.06 * c)),      # suprasellar
      _ell(at(0, 0.08, -0.27), (0.26 * a, 0.22 * b, 0.10 * c)),       # perimesencephalic (around the midbrain)
      _ell(at(0, 0.26, -0.20), (0.12 * a, 0.07 * b, 0.08 * c)),       # quadrigeminal
      _ell(at(0, -0.03, -0.52), (0.13 * a, 0.05 * b, 0.18 * c)),      # prepontine
      _ell(at(0, 0.85, -0.85), (0.14 * a, 0.10 * b, 0.10 * c)),       # cisterna magna
  ]
  for side in (-1, 1):   # Sylvian fissures: lateral surface to the suprasellar cistern, anteromedially
    cisterns.append(_ell((side * 0.62 * a, -0.14 * b, -0.12 * c), (0.36 * a, 0.035 * b, 0.13 * c), side * 22))
  brainstem = [_ell(at(0, 0.06, -0.27), (0.17 * a, 0.15 * b, 0.13 * c)),    # midbrain
               _ell(at(0, 0.13, -0.52), (0.21 * a, 0.16 * b, 0.16 * c)),    # pons
               _ell(at(0, 0.18, -0.82), (0.14 * a, 0.12 * b, 0.18 * c))]    # medulla
  deep = []
  for side in (-1, 1):
    deep += [_ell((side * 0.27 * a, -0.26 * b, 0.18 * c), (0.08 * a, 0.10 * b, 0.12 * c)),   # caudate head
             _ell((side * 0.36 * a, -0.05 * b, 0.0), (0.08 * a, 0.17 * b, 0.12 * c), side * 8),   # lentiform
             _ell((side * 0.14 * a, 0.11 * b, 0.03 * c), (0.12 * a, 0.13 * b, 0.12 * c))]   # thalamus
  fat, globes, air = [], [], []
  for side in (-1, 1):
    fat.append(_ell((side * 0.42 * a, -0.74 * b, -0.50 * c), (0.30 * a, 0.22 * b, 0.17 * c), -side * 15))
    globes.append(_ell((side * 0.45 * a, -0.80 * b, -0.50 * c), (11.5, 11.5, 11.5)))
    air.append(_ell((side * 0.80 * a, 0.12 * b, -0.62 * c), (0.12 * a, 0.10 * b, 0.12 * c)))   # mastoid
  air += [_ell(at(0, -0.22, -0.52), (0.22 * a, 0.14 * b, 0.12 * c)),     # sphenoid sinus
          _ell(at(0, -0.68, -0.45), (0.12 * a, 0.18 * b, 0.12 * c))]     # ethmoid cells
  return _Anatomy(tuple(vents), tuple(cisterns), tuple(brainstem), tuple(deep), tuple(fat), tuple(globes),
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


def _tentorium(xn, yn):
  """Tentorium height (normalised z): peaks at the straight sinus, slopes to the petrous ridges and occiput."""
  return np.float32(-0.10) - np.float32(0.40) * np.abs(xn) - np.float32(0.6) * (yn - 0.35) ** 2


def _falx_edge(yn):
  """Lower free edge of the falx (normalised z): above the corpus callosum, lower front and back."""
  return np.float32(0.42) - np.float32(0.62) * yn * yn


@dataclasses.dataclass
class _Fields:
  xn: np.ndarray
  yn: np.ndarray
  zn: np.ndarray
  rho: np.ndarray        # normalised radius of the inner-table ellipsoid (vertical wall below -_ZCLAMP)
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


def _fields(plane: _Plane, head: _Head, band=None) -> _Fields:
  """Head-frame fields every layer is keyed on; `band` limits the midline work to those columns."""
  xn = plane.linear(np.array([1.0, 0, 0]) / head.a)
  yn = plane.linear(np.array([0, 1.0, 0]) / head.b)
  zn = plane.linear(np.array([0, 0, 1.0]) / head.c)
  zc = np.maximum(zn, np.float32(-_ZCLAMP))
  rho = np.sqrt(xn * xn + yn * yn + zc * zc)
  depth = (np.float32(1.0) - rho) * np.float32(head.r_mean)
  c0, c1 = (0, plane.shape[1]) if band is None else band
  if c1 > c0:
    # Medial surface: the hemispheres face each other across the fissure, down to the falx's free edge.
    med = np.abs(xn[:, c0:c1]) * np.float32(head.a)
    med += np.maximum(_falx_edge(yn[:, c0:c1]) - zn[:, c0:c1], 0.0) * np.float32(4 * head.c)
    np.minimum(depth[:, c0:c1], med, out=depth[:, c0:c1])
  dz = post = plate = None
  if float(zn.min()) < _FLOOR_TOP + 0.02:
    floor, post, plate = _floor(xn, yn)
    dz = (zn - floor) * np.float32(head.c)
    np.minimum(depth, dz, out=depth)
  return _Fields(xn, yn, zn, rho, depth, dz, post, plate)


def _dcsf(plane: _Plane, head: _Head, fl: _Fields, widen: float = 0.0):
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


# --- Scanner -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Scan:
  matrix: int
  spacing: float
  thickness: float
  z: np.ndarray           # slice centres, scanner z (mm)
  R: np.ndarray           # head -> scanner rotation
  center: np.ndarray      # scanner position of the head origin

  def plane(self, k: int) -> _Plane:
    half = (self.matrix - 1) / 2.0
    s0 = np.array([-half * self.spacing, -half * self.spacing, self.z[k]])
    rt = self.R.T
    # Rows run along scanner y (posterior), columns along scanner x (patient left).
    return _Plane(rt @ (s0 - self.center), rt @ np.array([0.0, self.spacing, 0.0]),
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


def _sub_offsets(thickness: float):
  """Sub-slice sample offsets along z: 3 for thick slices, the centre sample first (the mask)."""
  if thickness <= 1.25:
    return (0.0,)
  return (0.0, -thickness / 3.0, thickness / 3.0)


# --- Bleeds ------------------------------------------------------------------


def _lateral_direction(rng, side, azimuth_deg, elevation):
  """Unit direction in normalised coordinates: azimuth from lateral, elevation = normalised z."""
  az = math.radians(rng.uniform(-azimuth_deg, azimuth_deg))
  e = rng.uniform(*elevation)
  h = math.sqrt(1 - e * e)
  return np.array([side * h * math.cos(az), h * math.sin(az), e])


def _surface(head, u):
  """Inner-table point along normalised direction u."""
  return head.abc * u


def _draw_bleed(rng, spec: PhantomSpec, head: _Head, subtype: str) -> dict:
  """Subtype, size and site of one bleed (geometry is fixed later, on the scan's voxel grid)."""
  bins = SIZE_BINS
  if spec.size_bin_probs_by_subtype is None:
    p = np.asarray(spec.size_bin_probs, np.float64)
  else:
    p = np.asarray(spec.size_bin_probs_by_subtype[SUBTYPE_ORDER.index(subtype)], np.float64)
  bin_ = bins[rng.choice(4, p=p / p.sum())]
  lo, hi = _BIN_TARGET_ML[bin_]
  target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  side = 1.0 if rng.random() < 0.5 else -1.0
  b = {"subtype": subtype, "target_ml": target, "side": side}
  a_, b_, c_ = head.a, head.b, head.c
  if subtype == "epidural":
    # Temporoparietal, under the squama (middle meningeal artery); lens 0.3–0.55 as thick as wide.
    u = _lateral_direction(rng, side, 60, (-0.2, 0.55))
    k = rng.uniform(0.3, 0.55)
    radius = min((2 * target * 1000 / (math.pi * k)) ** (1 / 3), 48.0)
    thick = max(target * 1000 * 2 / (math.pi * radius ** 2), 0.8)
    b.update(u=u, radius_mm=radius, thickness_mm=min(thick, 30.0), hu=rng.uniform(60, 85), site="temporoparietal")
    b["anchor"] = _surface(head, u) * (1 - 0.5 * b["thickness_mm"] / np.linalg.norm(_surface(head, u)))
  elif subtype == "subdural":
    u = _lateral_direction(rng, side, 65, (-0.1, 0.6))
    if rng.random() < spec.p_isodense_subdural:
      thick, hu, iso = rng.uniform(2.0, 4.0), rng.uniform(45, 55), True
    else:
      aspect = rng.uniform(5, 10)
      thick = float(np.clip((3 * target * 1000 / (2 * math.pi * aspect ** 2)) ** (1 / 3), 1.5, 22.0))
      hu, iso = rng.uniform(55, 80), False
    radius = math.sqrt(3 * target * 1000 / (2 * math.pi * thick))
    if radius > 95.0:
      radius = 95.0
      if not iso:
        thick = min(3 * target * 1000 / (2 * math.pi * radius ** 2), 25.0)
    b.update(u=u, radius_mm=radius, thickness_mm=thick, hu=hu, isodense=iso, site="convexity")
    b["anchor"] = _surface(head, u) * (1 - 0.5 * thick / np.linalg.norm(_surface(head, u)))
  elif subtype == "intraparenchymal":
    r = (3 * target * 1000 / (4 * math.pi)) ** (1 / 3)
    site = rng.choice(["deep", "lobar", "cerebellar", "pontine"], p=[0.45, 0.40, 0.12, 0.03])
    if site == "deep":      # hypertensive: putamen / thalamus
      center = (side * rng.uniform(0.15, 0.38) * a_, rng.uniform(-0.2, 0.15) * b_, rng.uniform(-0.1, 0.2) * c_)
    elif site == "lobar":
      u = _lateral_direction(rng, side, 85, (-0.05, 0.7))
      surf = _surface(head, u)
      dist = np.linalg.norm(surf)
      center = surf * (1 - min(rng.uniform(8, 18) + r, 0.6 * dist) / dist)
    elif site == "cerebellar":
      center = (side * rng.uniform(0.15, 0.4) * a_, rng.uniform(0.45, 0.65) * b_, rng.uniform(-0.75, -0.6) * c_)
    else:
      center = (0.0, 0.13 * b_, -0.52 * c_)
      r = min(r, 9.0)
    semi = r * np.exp(rng.normal(0, 0.15, size=3))
    semi *= r / np.prod(semi) ** (1 / 3)
    b.update(anchor=np.asarray(center, np.float64), semi=semi, yaw=rng.uniform(0, 180),
             tilt=rng.uniform(-25, 25), lobes=rng.normal(size=(3, 3)), lobe_k=rng.uniform(2, 4.5, size=3),
             lobe_phase=rng.uniform(0, 2 * math.pi, size=3),
             lobe_amp=rng.uniform(0.04, 0.12, size=3) if r > 2.0 else np.zeros(3),
             edema=bool(rng.random() < spec.p_edema and r > 3.0), edema_rim=rng.uniform(0.2, 0.5),
             edema_hu=head.wm_hu - rng.uniform(6, 12), hu=rng.uniform(58, 85), site=site)
  elif subtype == "intraventricular":
    b.update(hu=rng.uniform(52, 80), site="ventricles")
    b["anchor"] = np.array([side * 0.25 * a_, 0.50 * b_, 0.08 * c_])
  else:  # subarachnoid
    site = rng.choice(["basal", "sylvian", "convexity", "interhemispheric"], p=[0.35, 0.25, 0.3, 0.1])
    if site == "basal":
      center, phi = (0.0, rng.uniform(-0.1, 0.1) * b_, rng.uniform(-0.3, -0.22) * c_), 0.25
    elif site == "sylvian":
      center, phi = (side * rng.uniform(0.5, 0.8) * a_, -0.14 * b_, rng.uniform(-0.18, -0.06) * c_), 0.38
    elif site == "convexity":
      u = _lateral_direction(rng, side, 80, (0.0, 0.8))
      surf = _surface(head, u)
      center, phi = surf * (1 - (head.csf_mm + 4.0) / np.linalg.norm(surf)), 0.17
    else:
      y, z = rng.uniform(-0.6, 0.5), rng.uniform(0.3, 0.6)
      center = (0.0, y * b_, z * c_)
      phi = 0.12
    radius = min((target * 1000 / (phi * 4 / 3 * math.pi)) ** (1 / 3), 45.0)
    b.update(anchor=np.asarray(center, np.float64), radius_mm=radius, widen_mm=rng.uniform(0.3, 1.2),
             hu=rng.uniform(55, 80), site=site)
  return b


def _draw_bleeds(rng, spec: PhantomSpec, head: _Head) -> list[dict]:
  if rng.random() >= spec.p_hemorrhage:
    return []
  p = np.asarray(spec.subtype_probs, np.float64)
  p = p / p.sum()
  bleeds = [_draw_bleed(rng, spec, head, SUBTYPE_ORDER[rng.choice(5, p=p)])]
  while len(bleeds) < spec.max_bleeds and rng.random() < spec.p_extra_bleed:
    bleeds.append(_draw_bleed(rng, spec, head, SUBTYPE_ORDER[rng.choice(5, p=p)]))
  return bleeds


def _ivh_level(b, scan: _Scan, head: _Head, anat: _Anatomy) -> float:
  """Scanner-y level above which the ventricles hold the target volume (blood layers posteriorly, supine)."""
  ys = []
  gravity = scan.R[1]   # scanner +y (towards the table) in head coordinates
  for k in range(len(scan.z)):
    plane = scan.plane(k)
    patch = _union(plane, anat.ventricles, scan.thickness)
    if patch is None:
      continue
    box, _, inside = patch
    y = plane.sub(box).linear(gravity)
    ys.append(y[inside])
  ys = np.sort(np.concatenate(ys)) if ys else np.zeros(0)
  voxel_mm3 = scan.spacing ** 2 * scan.thickness
  n = max(1, int(round(b["target_ml"] * 1000 / voxel_mm3)))
  if ys.size == 0 or n >= ys.size:
    return -np.inf     # a cast of the whole ventricular system
  return float(0.5 * (ys[-n] + ys[-n - 1]))


def _bounding_ball(ells):
  """A ball holding every ellipsoid (each bounded by its largest semi-axis)."""
  centers = np.stack([e.center for e in ells])
  radii = np.array([1.0 / np.linalg.norm(e.M, axis=1).min() for e in ells])
  mid = 0.5 * ((centers - radii[:, None]).min(0) + (centers + radii[:, None]).max(0))
  return mid, float(np.max(np.linalg.norm(centers - mid, axis=1) + radii)) + 1.0


def _finalize_bleed(b, scan: _Scan, head: _Head, anat: _Anatomy) -> dict:
  """Fix the geometry on the voxel grid: snap small bleeds' anchors to a voxel centre."""
  b = dict(b)
  st = b["subtype"]
  if st in ("epidural", "subdural"):
    anchor = scan.snap(b["anchor"])
    q = anchor / head.abc
    rho = float(np.linalg.norm(q))
    b["u"] = q / rho
    r_loc = float(np.linalg.norm(_surface(head, b["u"])))
    depth = (1 - rho) * r_loc
    if not 0 < depth < b["thickness_mm"]:
      b["thickness_mm"] = max(b["thickness_mm"], 2 * depth + 0.2)
    b["r_loc"] = r_loc
    b["anchor"] = anchor
    b["bound_center"] = _surface(head, b["u"])
    b["bound_radius"] = 1.25 * b["radius_mm"] + b["thickness_mm"] + 3.0
  elif st == "intraparenchymal":
    # Parenchyma, not ventricle: a deep bleed drawn inside a (large) ventricle moves outwards.
    anchor = np.array(b["anchor"], np.float64)
    for _ in range(40):
      if not any(np.linalg.norm(e.M @ (anchor - e.center)) <= 1.15 for e in anat.ventricles):
        break
      anchor[0] += (b["side"] if anchor[0] == 0 else np.sign(anchor[0])) * 1.5
    b["anchor"] = scan.snap(anchor)
    grow = (1 + np.sum(b["lobe_amp"])) * ((1 + b["edema_rim"]) if b["edema"] else 1.0)
    b["bound_center"] = b["anchor"]
    b["bound_radius"] = float(np.max(b["semi"])) * grow + 2.0
  elif st == "intraventricular":
    b["level"] = _ivh_level(b, scan, head, anat)
    b["bound_center"], b["bound_radius"] = _bounding_ball(anat.ventricles)
  else:
    b["bound_center"] = b["anchor"]
    b["bound_radius"] = b["radius_mm"] + 2.0
  return b


def _bleed_field(b, plane: _Plane, head: _Head, anat: _Anatomy, scan: _Scan, thick: float):
  """(blood fraction, centre-inside, edema fraction or None) of one bleed on a (sub-)plane."""
  px = scan.spacing
  st = b["subtype"]
  if st in ("epidural", "subdural"):
    fl = _fields(plane, head, band=(0, 0))
    u = b["u"]
    dot = plane.linear(u / head.abc) / np.maximum(fl.rho, np.float32(1e-3))
    chord = np.sqrt(np.maximum(np.float32(2.0) - 2 * dot, 0.0)) * np.float32(b["r_loc"] / b["radius_mm"])
    depth = (np.float32(1.0) - fl.rho) * np.float32(b["r_loc"])
    x2 = chord * chord
    # Epidural: a lens (parabolic profile, short and thick, stopped by the sutures);
    # subdural: a crescent, near-constant thickness tapering at its ends.
    prof = (np.float32(1.0) - x2) if st == "epidural" else (np.float32(1.0) - x2 * x2)
    h = prof * np.float32(b["thickness_mm"]) - depth
    # Neither crosses the midline (the falx / the sagittal sinus's dural attachment).
    np.minimum(h, fl.xn * np.float32(b["side"] * head.a) - np.float32(1.0), out=h)
    inside = (h >= 0) & fl.intracranial
    return _ramp(h, px), inside, None
  if st == "intraparenchymal":
    e = _ell(b["anchor"], b["semi"], b["yaw"], b["tilt"])
    q = [plane.linear(e.M[i], -float(e.M[i] @ e.center)) for i in range(3)]
    rho = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
    inv = np.float32(1.0) / np.maximum(rho, np.float32(1e-3))
    lobed = np.ones_like(rho)
    for w, k, ph, amp in zip(b["lobes"], b["lobe_k"], b["lobe_phase"], b["lobe_amp"]):
      if amp > 0:
        arg = (q[0] * np.float32(w[0]) + q[1] * np.float32(w[1]) + q[2] * np.float32(w[2])) * inv
        lobed += np.float32(amp) * np.sin(arg * np.float32(k) + np.float32(ph))
    r_mm = np.float32(np.mean(b["semi"]))
    h = (lobed - rho) * r_mm
    fl = _fields(plane, head, band=(0, 0))
    vent = _union(plane, anat.ventricles, thick)
    vfrac, vin = _embed(plane.shape, vent)
    inside = (h >= 0) & fl.intracranial & ~vin
    frac = _ramp(h, px) * (np.float32(1.0) - vfrac)
    edema = None
    if b["edema"]:
      edema = _ramp((lobed * np.float32(1 + b["edema_rim"]) - rho) * r_mm, 2 * px) * (np.float32(1.0) - vfrac)
    return frac, inside, edema
  if st == "intraventricular":
    vent = _union(plane, anat.ventricles, thick)
    vfrac, vin = _embed(plane.shape, vent)
    if not np.isfinite(b["level"]):
      return vfrac, vin, None
    gravity = scan.R[1]
    y = plane.linear(gravity, -b["level"])
    width = px + thick * abs(float(gravity @ plane.normal))
    return vfrac * _ramp(y, width), vin & (y >= 0), None
  # Subarachnoid: blood fills (and slightly distends) the CSF spaces inside a ball.
  fl = _fields(plane, head)
  widen = b["widen_mm"]
  dc = _dcsf(plane, head, fl, widen)
  space = _ramp(-dc, px + 0.35 * thick)
  space_in = dc <= 0
  grown = tuple(_ell(e.center, 1.0 / np.linalg.norm(e.M, axis=1) + widen) for e in anat.cisterns)
  cist, cin = _embed(plane.shape, _union(plane, grown, thick))
  stem, sin_ = _embed(plane.shape, _union(plane, anat.brainstem, thick))
  cist *= np.float32(1.0) - stem
  np.maximum(space, cist, out=space)
  space_in |= cin & ~sin_
  vfrac, vin = _embed(plane.shape, _union(plane, anat.ventricles, thick))
  d = plane.linear(np.zeros(3))   # distance to the ball's centre
  for i in range(3):
    t = plane.linear(np.eye(3)[i], -float(b["anchor"][i]))
    d += t * t
  ball = np.float32(b["radius_mm"]) - np.sqrt(d)
  inside = space_in & (ball >= 0) & ~vin & fl.intracranial
  frac = space * _ramp(ball, px) * (np.float32(1.0) - vfrac)
  return frac, inside, None


def _plane_box(plane: _Plane, center, radius):
  """Pixel box of a ball's section (in-plane bound), or None."""
  dist = (center - plane.origin) @ plane.normal
  if abs(dist) > radius:
    return None
  rel = center - plane.origin
  r = rel @ plane.d_row / (plane.d_row @ plane.d_row)
  c = rel @ plane.d_col / (plane.d_col @ plane.d_col)
  half_r = radius / np.linalg.norm(plane.d_row) + 2
  half_c = radius / np.linalg.norm(plane.d_col) + 2
  r0, r1 = max(int(r - half_r), 0), min(int(r + half_r) + 2, plane.shape[0])
  c0, c1 = max(int(c - half_c), 0), min(int(c + half_c) + 2, plane.shape[1])
  if r1 <= r0 or c1 <= c0:
    return None
  return r0, r1, c0, c1


def _render_bleed(b, scan: _Scan, head: _Head, anat: _Anatomy):
  """Per-slice patches {k: (box, blood fraction, mask, edema fraction)}; partial volume from sub-slices."""
  offsets = _sub_offsets(scan.thickness)
  sub_thick = scan.thickness / len(offsets)
  patches = {}
  for k in scan.slices_near(b["bound_center"], b["bound_radius"]):
    plane = scan.plane(k)
    box = _plane_box(plane, b["bound_center"], b["bound_radius"] + 0.5 * scan.thickness)
    if box is None:
      continue
    sub = plane.sub(box)
    frac = edema = inside = None
    for dn in offsets:
      f, m, e = _bleed_field(b, sub.shifted(dn), head, anat, scan, sub_thick)
      if inside is None:
        frac, inside, edema = f, m, e
      else:
        frac += f
        if e is not None:
          edema += e
    frac *= np.float32(1.0 / len(offsets))
    if edema is not None:
      edema *= np.float32(1.0 / len(offsets))
    # Keep only the rows and columns the bleed (or its edema) touches.
    touched = (frac > 0) | inside if edema is None else (frac > 0) | inside | (edema > 0)
    rows, cols = np.flatnonzero(touched.any(1)), np.flatnonzero(touched.any(0))
    if rows.size == 0:
      continue
    a0, a1, q0, q1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = (slice(a0, a1), slice(q0, q1))
    patches[k] = ((box[0] + a0, box[0] + a1, box[2] + q0, box[2] + q1), frac[crop], inside[crop],
                  None if edema is None else edema[crop])
  return patches


def _bleed_record(b, voxels: int, voxel_ml: float, scan: _Scan) -> dict:
  """What a bleed was: its own mask's volume and bin, where (scanner mm and voxel index), how dense."""
  vol = voxels * voxel_ml
  center = scan.to_scanner(b["anchor"])
  half = (scan.matrix - 1) / 2.0
  index = ((center[2] - scan.z[0]) / scan.thickness, center[1] / scan.spacing + half, center[0] / scan.spacing + half)
  rec = {"subtype": b["subtype"], "volume_ml": vol, "size_bin": size_bin(vol), "voxels": voxels,
         "center_mm": tuple(float(v) for v in center), "center_index": tuple(float(v) for v in index),
         "hu": float(b["hu"]), "site": str(b["site"]), "target_ml": float(b["target_ml"])}
  for key in ("thickness_mm", "radius_mm", "isodense", "edema", "widen_mm"):
    if key in b:
      rec[key] = b[key] if isinstance(b[key], bool) else float(b[key])
  if b["subtype"] == "intraventricular":
    rec["cast"] = not np.isfinite(b["level"])
  return rec


# --- Mimics ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Mimics:
  calcifications: tuple     # (name, _Ell) pairs; _Ell.hu is the calcium density
  falx_hu: float            # falx and superior sagittal sinus
  tentorium_hu: float
  beam_hardening: dict | None


def _draw_mimics(rng, spec: PhantomSpec, head: _Head) -> _Mimics:
  """Calcifications, dense dura and beam hardening: normal findings at or above blood density."""
  a, b, c = head.a, head.b, head.c
  calcs = []
  if rng.random() < spec.p_pineal_calcification:
    r = rng.uniform(1.5, 3.5)
    pineal = _ell((0.0, 0.20 * b, -0.08 * c), (r, r * 1.2, r), hu=rng.uniform(150, 450))
    calcs.append(("pineal_calcification", pineal))
  if rng.random() < spec.p_choroid_calcification:
    for side in (-1, 1):   # glomus of the choroid plexus, in the atria
      for _ in range(2):
        r = rng.uniform(1.2, 3.0)
        ctr = (side * (0.27 * a + 0.03 * a * head.vent_scale) + rng.normal(0, 1.5),
               0.30 * b + rng.normal(0, 2), 0.12 * c + rng.normal(0, 2))
        calcs.append(("choroid_calcification",
                      _ell(ctr, (r, 1.3 * r, r), rng.uniform(0, 180), hu=rng.uniform(100, 350))))
  if rng.random() < spec.p_basal_ganglia_calcification:
    for side in (-1, 1):   # globus pallidus
      calcs.append(("basal_ganglia_calcification",
                    _ell((side * 0.33 * a, -0.05 * b, 0.0), (2.5, 5.0, 3.0), hu=rng.uniform(100, 250))))
  falx_hu = rng.uniform(55, 80) if rng.random() < spec.p_dense_falx else head.falx_hu
  tent_hu = rng.uniform(55, 75) if rng.random() < spec.p_dense_tentorium else head.tentorium_hu
  bh = None
  if rng.random() < spec.p_beam_hardening:
    bh = {"amp": rng.uniform(8, 25), "bar": rng.uniform(5, 20), "k": 2 * math.pi / rng.uniform(5, 10),
          "angle": rng.uniform(0, math.pi), "phase": rng.uniform(0, 2 * math.pi)}
  return _Mimics(tuple(calcs), falx_hu, tent_hu, bh)


# Order of Phantom.mimics.
MIMICS = ("pineal_calcification", "choroid_calcification", "basal_ganglia_calcification", "dense_falx",
          "dense_tentorium", "beam_hardening")
_DENSE_DURA_HU = 50.0   # falx / tentorium denser than this reads as a mimic of blood


# --- Slices ------------------------------------------------------------------


def _shell_tables(head: _Head):
  """Unblurred radial profiles: (rho grid, HU of the shell with 0 inside, inside indicator, cupping)."""
  rm = head.r_mean
  lo, hi = 1.0 - 24.0 / rm, 1.0 + (head.skull_mm + head.scalp_mm + 4.0) / rm
  rho = np.linspace(lo, hi, 4096)
  mm = (rho - 1.0) * rm        # mm outside the inner table
  sk, sc = head.skull_mm, head.scalp_mm
  hu = np.full(rho.shape, -1000.0)
  hu[mm < sk + sc] = head.skin_hu
  hu[mm < sk + 0.65 * sc] = head.fat_hu          # subcutaneous fat, then galea / muscle over the bone
  hu[mm < sk + 0.3 * sc] = head.soft_hu
  hu[mm < sk] = head.bone_hu
  hu[mm < sk - head.outer_table_mm] = head.diploe_hu
  hu[mm < head.inner_table_mm] = head.bone_hu
  inside = (mm < 0).astype(np.float64)
  hu[mm < 0] = 0.0
  # Beam hardening ("cupping" near bone): the brain's outer few mm read a little dense.
  cup = np.where(mm < 0, head.cupping_hu * np.exp(np.minimum(mm, 0) / 4.0), 0.0)
  return rho, hu + cup, inside


def _blurred(rho, values, width):
  """Box filter of a profile over `width` (rho units): the voxel's footprint on the layer."""
  step = rho[1] - rho[0]
  if width <= 2 * step:
    return values.astype(np.float32)
  pad = int(math.ceil(width / step)) + 2
  ext = np.concatenate([np.full(pad, values[0]), values, np.full(pad, values[-1])])
  cum = np.concatenate([[0.0], np.cumsum(ext) * step])
  edges = rho[0] - (pad + 0.5) * step + step * np.arange(ext.size + 1)
  out = np.interp(rho + width / 2, edges, cum) - np.interp(rho - width / 2, edges, cum)
  return (out / width).astype(np.float32)


def _shell_footprint(zn: float, head: _Head, px: float, t: float) -> float:
  """How far the normalised radius changes across a voxel at the vault wall (rho units).

  In-plane the pixel crosses the wall; along z the slab crosses it too where the
  wall is tilted (towards the vertex), which is why a thick slice near the top
  of the head shows a broad, blurred skull.
  """
  if zn < -_ZCLAMP:       # the vertical wall around the posterior fossa
    return px / head.r_mean
  zn = min(abs(zn), 0.999)
  return px * math.sqrt(max(1.0 - zn * zn, 0.05)) / head.r_mean + t * zn / head.c


def _head_box(plane: _Plane, head: _Head, thick: float):
  """Pixel box of the head (outer skin) on this slice, or None above the vertex."""
  grow = (head.skull_mm + head.scalp_mm + 2.0) / head.r_mean
  skin = _ell(np.zeros(3), head.abc * (1 + grow))
  box = _ell_box(plane, skin, thick)
  corners = plane.linear(np.array([0, 0, 1.0]))[[0, 0, -1, -1], [0, -1, 0, -1]]
  if corners.min() < -_ZCLAMP * head.c:
    # Below the clamp the wall is vertical: the section there is the clamp level's
    # (a slab reaching the equator bounds it, generously).
    wide = _ell_box(plane, skin, 4 * head.c)
    box = wide if box is None else tuple(min(u, v) if i % 2 == 0 else max(u, v)
                                         for i, (u, v) in enumerate(zip(box, wide)))
  return box


def _midline_band(plane: _Plane, head: _Head):
  """Columns within reach of the midline (x = 0) on every row: where fissure and falx live."""
  reach = head.sulcus_depth_mm + head.gm_mm + head.csf_mm + 10.0
  dcx = plane.d_col[0]
  if abs(dcx) < 1e-6:
    return 0, plane.shape[1]
  xs = [plane.origin[0], plane.origin[0] + (plane.shape[0] - 1) * plane.d_row[0]]
  cs = [-x / dcx for x in xs]
  pad = reach / abs(dcx)
  c0 = int(max(min(cs) - pad, 0))
  c1 = int(min(max(cs) + pad + 1, plane.shape[1]))
  return c0, max(c0, c1)


@dataclasses.dataclass(frozen=True)
class _Study:
  head: _Head
  anat: _Anatomy
  scan: _Scan
  mimics: _Mimics
  tables: tuple        # _shell_tables(head)


def _render_slice(k: int, st: _Study, bleed_patches: list):
  """HU (float32, before noise and calibration), intracranial and ventricle masks, mimics shown."""
  head, anat, scan = st.head, st.anat, st.scan
  n, t, px = scan.matrix, scan.thickness, scan.spacing
  full = scan.plane(k)
  img = np.full((n, n), -1000.0, np.float32)
  intracranial = np.zeros((n, n), bool)
  ventricles = np.zeros((n, n), bool)
  shown = set()
  box = _head_box(full, head, t)
  if box is None:
    return img, intracranial, ventricles, shown
  r0, r1, c0, c1 = box
  plane = full.sub(box)
  band = _midline_band(plane, head)
  fl = _fields(plane, head, band)

  # Brain: white matter, the grey ribbon around every CSF surface, CSF.
  w = px + 0.35 * t
  dc = _dcsf(plane, head, fl)
  inner = np.full(plane.shape, head.wm_hu, np.float32)
  inner += np.float32(head.gm_hu - head.wm_hu) * _ramp(np.float32(head.gm_mm) - dc, w)
  inner += np.float32(head.csf_hu - head.gm_hu) * _ramp(-dc, w)

  if fl.dz is not None:   # posterior fossa: cerebellum below the tentorium
    tent = _tentorium(fl.xn, fl.yn)
    zdist = (tent - fl.zn) * np.float32(head.c)
    infra = _ramp(zdist, t + 0.5 * px) * fl.post
    if float(infra.max()) > 0:
      # Folia: thin fissures roughly parallel to the surface, faint on CT.
      folia = np.sin(fl.depth * np.float32(2 * math.pi / 6.0) + np.sin(fl.xn * np.float32(7.0)) * np.float32(2.0)
                     + np.sin(fl.yn * np.float32(11.0)))
      folia_csf = np.float32(0.3) * (np.float32(1.0) - np.minimum(fl.depth * np.float32(1 / 9.0), 1.0)) \
          - np.abs(folia)
      cb = np.full(plane.shape, head.wm_hu, np.float32)
      cb += np.float32(head.gm_hu - 1.0 - head.wm_hu) * _ramp(np.float32(14.0) - fl.depth, 4.0)
      cb += np.float32(0.6 * (head.csf_hu - head.gm_hu)) * _ramp(folia_csf, 0.2 + 0.05 * t) * _ramp(fl.depth, w)
      _paint(inner, infra, 0.0)
      inner += infra * cb
      # The tentorium itself: a dural sheet, a V on axial slices.
      notch = np.float32(0.25) * (np.float32(1.0) - np.clip((fl.yn - 0.05) * np.float32(1 / 0.35), 0.0, 1.0))
      sheet = _ramp(np.float32(0.8) - np.abs(zdist), t + 0.5 * px) * fl.post * (np.abs(fl.xn) > notch)
      _paint(inner, sheet, st.mimics.tentorium_hu)
      if st.mimics.tentorium_hu > _DENSE_DURA_HU and float(sheet.max()) > 0.3:
        shown.add("dense_tentorium")

  def paint_union(ells, hu, mask_out=None):
    patch = _union(plane, ells, t)
    if patch is None:
      return
    (a0, a1, b0, b1), f, m = patch
    _paint(inner[a0:a1, b0:b1], f, hu)
    if mask_out is not None:
      mask_out[r0 + a0:r0 + a1, c0 + b0:c0 + b1] |= m

  paint_union(anat.deep_grey, head.deep_gm_hu)
  paint_union(anat.brainstem, head.stem_hu)
  cist = _union(plane, anat.cisterns, t)
  if cist is not None:
    (a0, a1, b0, b1), f, _ = cist
    stem = _embed(plane.shape, _union(plane, anat.brainstem, t))[0][a0:a1, b0:b1]
    _paint(inner[a0:a1, b0:b1], f * (np.float32(1.0) - stem), head.csf_hu)
  paint_union(anat.ventricles, head.csf_hu, ventricles)

  # Falx and superior sagittal sinus, in the midline band.
  b0, b1 = band
  if b1 > b0:
    xmm = np.abs(fl.xn[:, b0:b1]) * np.float32(head.a)
    vault_depth = (np.float32(1.0) - fl.rho[:, b0:b1]) * np.float32(head.r_mean)
    half = np.float32(0.5 * head.falx_mm) + np.maximum(np.float32(7.0) - vault_depth, 0.0) * np.float32(0.5)
    h = np.minimum(half - xmm, (fl.zn[:, b0:b1] - _falx_edge(fl.yn[:, b0:b1])) * np.float32(head.c))
    f = _ramp(h, px)
    _paint(inner[:, b0:b1], f, st.mimics.falx_hu)
    if st.mimics.falx_hu > _DENSE_DURA_HU and float(f.max()) > 0.5:
      shown.add("dense_falx")

  for pbox, frac, _, edema, hu, edema_hu in bleed_patches:
    a0, a1, q0, q1 = pbox[0] - r0, pbox[1] - r0, pbox[2] - c0, pbox[3] - c0
    # Clip to the head box (a bleed never leaves the head; its box may).
    sa0, sa1, sq0, sq1 = max(a0, 0), min(a1, plane.shape[0]), max(q0, 0), min(q1, plane.shape[1])
    if sa1 <= sa0 or sq1 <= sq0:
      continue
    sel = (slice(sa0 - a0, sa1 - a0), slice(sq0 - q0, sq1 - q0))
    view = inner[sa0:sa1, sq0:sq1]
    if edema is not None:
      _paint(view, edema[sel], edema_hu)
    _paint(view, frac[sel], hu)

  calcs = st.mimics.calcifications
  for (name, e), eb in zip(calcs, _ell_boxes(plane, [e for _, e in calcs], t) if calcs else ()):
    if eb is None:
      continue
    f, _ = _ell_fraction(plane.sub(eb), e, t)
    _paint(inner[eb[0]:eb[1], eb[2]:eb[3]], f, e.hu)
    if float(f.max()) > 0.25:
      shown.add(name)

  if st.mimics.beam_hardening is not None and fl.dz is not None:
    if _beam_hardening(inner, plane, head, st.mimics.beam_hardening, float(fl.zn.mean())):
      shown.add("beam_hardening")

  # Below the cranial floor: skull-base bone, then orbits, sinuses and the soft tissue of face and neck.
  fz = t + px
  if fl.dz is not None:
    base = np.full(plane.shape, head.soft_hu, np.float32)
    for ells, hu in ((st.anat.face_fat, -90.0), (st.anat.globes, 12.0), (st.anat.air_cells, -950.0)):
      patch = _union(plane, ells, t)
      if patch is not None:
        (a0, a1, b0, b1), f, _ = patch
        _paint(base[a0:a1, b0:b1], f, hu)
    _paint(base, _ramp(fl.dz + fl.plate, fz), 0.9 * head.bone_hu)
    inner -= base
    inner *= _ramp(fl.dz, fz)
    inner += base

  rho_grid, shell, inside_w = st.tables
  width = _shell_footprint(float(fl.zn[plane.shape[0] // 2, plane.shape[1] // 2]), head, px, t)
  s_tab = _blurred(rho_grid, shell, width)
  v_tab = _blurred(rho_grid, inside_w, width)
  idx = (fl.rho - np.float32(rho_grid[0])) * np.float32((len(rho_grid) - 1) / (rho_grid[-1] - rho_grid[0]))
  np.clip(idx, 0, len(rho_grid) - 1, out=idx)
  idx = idx.astype(np.int32)
  out = np.take(v_tab, idx)
  out *= inner
  out += np.take(s_tab, idx)
  img[r0:r1, c0:c1] = out
  intracranial[r0:r1, c0:c1] = fl.intracranial
  ventricles[r0:r1, c0:c1] &= fl.intracranial
  return img, intracranial, ventricles, shown


def _beam_hardening(inner, plane: _Plane, head: _Head, bh: dict, zn: float) -> bool:
  """Raised HU and streaks between the petrous bones (posterior fossa, skull-base slices)."""
  zenv = math.exp(-((zn + 0.55) / 0.18) ** 2)
  if bh["amp"] * zenv < 1.0:
    return False
  x = plane.linear(np.array([1.0 / (0.45 * head.a), 0, 0]))
  y = plane.linear(np.array([0, 1.0 / (0.3 * head.b), 0]), -0.3 / 0.3)
  env = np.exp(-(x * x + y * y))
  ca, sa = math.cos(bh["angle"]), math.sin(bh["angle"])
  streak = np.cos(plane.linear(np.array([ca, sa, 0.0]) * bh["k"], bh["phase"]))
  field = env * (np.float32(1.0) + np.float32(0.6) * streak) * np.float32(bh["amp"] * zenv)
  # The interpetrous (Hounsfield) bar: a dark band just behind the petrous apices.
  ybar = plane.linear(np.array([0, 1.0 / 4.0, 0]), -0.02 * head.b / 4.0)
  field -= np.float32(bh["bar"] * zenv) * np.exp(-(ybar * ybar) - (x * x) * np.float32(0.5))
  inner += field
  return bh["amp"] * zenv >= 5.0


# --- The study ---------------------------------------------------------------


def noise_sd(sd_at_5mm: float, thickness_mm: float) -> float:
  """Quantum noise grows as the slice thins: sd ∝ 1/sqrt(thickness) at fixed dose.

  A 0.625 mm reconstruction is about 2.8× noisier than the 5 mm one of the same
  acquisition, which is why thin-slice studies are harder to read.
  """
  return sd_at_5mm * math.sqrt(5.0 / thickness_mm)


def _noise_bank(rng, matrix: int, pad: int):
  """Two tiles of unit-variance noise, correlated over ~1 mm (CT noise is not white).

  Two passes of a [1 2 1] x [1 2 1] filter: area-averaging 4x4 pixels then keeps
  two thirds of the noise (white noise would keep a quarter), as on real scans.
  Slices take shifted, flipped windows of the tiles: drawing fresh normals for
  every 512x512 slice would cost more than rendering it.
  """
  n = matrix + pad + 4
  s = rng.standard_normal((2, n, n), dtype=np.float32)
  for _ in range(2):
    s = s[:, :-2] + 2 * s[:, 1:-1] + s[:, 2:]
    s = s[:, :, :-2] + 2 * s[:, :, 1:-1] + s[:, :, 2:]
  s *= np.float32(1.0 / 70.0)   # [1 4 6 4 1] has L2 gain sqrt(70) per axis
  return s


def _check_spec(spec: PhantomSpec):
  lo, hi = spec.pixel_spacing_mm
  if not 0 < lo <= hi:
    raise ValueError(f"PhantomSpec.pixel_spacing_mm={spec.pixel_spacing_mm}: need 0 < low <= high")
  if spec.matrix * lo < 180.0:
    raise ValueError(f"PhantomSpec: matrix={spec.matrix} at pixel_spacing_mm={spec.pixel_spacing_mm} gives a "
                     f"{spec.matrix * lo:.0f} mm field of view; a head needs >= 180 mm (scale the spacing)")
  if not spec.slice_thickness_mm or min(spec.slice_thickness_mm) <= 0:
    raise ValueError(f"PhantomSpec.slice_thickness_mm={spec.slice_thickness_mm}: need positive choices")
  if spec.max_slices < 1:
    raise ValueError(f"PhantomSpec.max_slices={spec.max_slices}: need >= 1")
  if len(spec.subtype_probs) != 5 or len(spec.size_bin_probs) != 4:
    raise ValueError("PhantomSpec: subtype_probs needs 5 entries (SUBTYPE_ORDER), size_bin_probs 4 "
                     "(punctate, small, medium, large)")
  by_subtype = spec.size_bin_probs_by_subtype
  if by_subtype is not None and (len(by_subtype) != 5 or any(len(row) != 4 or min(row) < 0 or sum(row) <= 0
                                                              for row in by_subtype)):
    raise ValueError(f"PhantomSpec.size_bin_probs_by_subtype={by_subtype}: need 5 rows (SUBTYPE_ORDER) of "
                     "4 non-negative weights (punctate, small, medium, large)")


def make_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> Phantom:
  """One synthetic head CT study, deterministic in (seed, spec)."""
  _check_spec(spec)
  # Independent streams: changing, say, p_hemorrhage leaves the anatomy of a seed unchanged.
  head_rng, scan_rng, bleed_rng, mimic_rng, noise_rng = np.random.default_rng(seed).spawn(5)

  spacing = float(scan_rng.uniform(*spec.pixel_spacing_mm))
  thickness = float(spec.slice_thickness_mm[scan_rng.integers(len(spec.slice_thickness_mm))])
  yaw = scan_rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg)
  pitch = scan_rng.uniform(-spec.max_pitch_deg, spec.max_pitch_deg)
  fov = spec.matrix * spacing
  shift = scan_rng.uniform(-0.02, 0.02, size=2) * fov
  # The head (outer skin, rotated; its width is < 0.85 x its length) must fit the field of view.
  turn = abs(math.cos(math.radians(yaw))) + 0.25 * abs(math.sin(math.radians(yaw)))
  head = _draw_head(head_rng, (0.47 * fov - np.abs(shift).max()) / turn)
  anat = _anatomy(head)

  bleeds = _draw_bleeds(bleed_rng, spec, head)
  mimics = _draw_mimics(mimic_rng, spec, head)

  # Coverage: skull base to vertex, or a slab of max_slices around a bleed (or a
  # pseudo-bleed site, so slab position says nothing about the label).
  z_lo = -0.92 * head.c
  z_hi = head.c + head.skull_mm + head.scalp_mm - 2.0
  n_full = int(math.ceil((z_hi - z_lo) / thickness))
  R = _rot_z(yaw) @ _rot_x(pitch)
  center = np.array([shift[0], shift[1], 0.0])
  if n_full <= spec.max_slices:
    n_slices = n_full
    z0 = z_lo + thickness / 2 + scan_rng.uniform(-0.5, 0.5) * thickness
  else:
    n_slices = spec.max_slices
    slab = n_slices * thickness
    anchor_site = bleeds[0] if bleeds else _draw_bleed(
        scan_rng, spec, head, SUBTYPE_ORDER[scan_rng.integers(5)])
    anchor_z = (R @ anchor_site["anchor"] + center)[2] + scan_rng.uniform(-0.3, 0.3) * slab
    z0 = float(np.clip(anchor_z - slab / 2, z_lo, z_hi - slab)) + thickness / 2
  scan = _Scan(spec.matrix, spacing, thickness, z0 + thickness * np.arange(n_slices), R, center)

  st = _Study(head, anat, scan, mimics, _shell_tables(head))

  S, H = n_slices, spec.matrix
  voxel_ml = _voxel_ml((spacing, spacing), thickness)
  masks = np.zeros((5, S, H, H), bool)
  per_slice = {k: [] for k in range(S)}
  records = []
  for b in bleeds:
    b = _finalize_bleed(b, scan, head, anat)
    patches = _render_bleed(b, scan, head, anat)
    voxels = sum(int(np.count_nonzero(p[2])) for p in patches.values())
    if voxels == 0:
      continue   # outside the covered slab, or too small to hold a voxel centre
    i = SUBTYPE_ORDER.index(b["subtype"])
    for k, (box, frac, inside, edema) in patches.items():
      masks[i, k, box[0]:box[1], box[2]:box[3]] |= inside
      per_slice[k].append((box, frac, inside, edema, b["hu"], b.get("edema_hu")))
    records.append(_bleed_record(b, voxels, voxel_ml, scan))

  hu = np.empty((S, H, H), np.int16)
  intracranial = np.zeros((S, H, H), bool)
  ventricles = np.zeros((S, H, H), bool)
  mimic_slices = np.zeros(S, bool)
  shown = set()
  sd = noise_sd(float(noise_rng.uniform(*spec.noise_sd_hu)), st.scan.thickness)
  offset = float(noise_rng.uniform(*spec.hu_offset))
  pad = max(8, H // 8)
  bank = _noise_bank(noise_rng, H, pad)
  picks = noise_rng.integers(0, [2, pad + 1, pad + 1, 2, 2], size=(S, 5))
  for k in range(S):
    img, ic, vent, names = _render_slice(k, st, per_slice[k])
    tile, dr, dc, fr, fc = picks[k]
    noise = bank[tile, dr:dr + H, dc:dc + H]
    noise = noise[::-1] if fr else noise
    noise = noise[:, ::-1] if fc else noise
    img += np.float32(sd) * noise
    img += np.float32(offset)
    np.rint(img, out=img)
    np.clip(img, -1024, 3071, out=img)
    hu[k] = img
    intracranial[k] = ic
    ventricles[k] = vent
    mimic_slices[k] = bool(names)
    shown |= names

  labels = np.zeros((S, 6), np.float32)
  labels[:, 1:] = masks.any(axis=(2, 3)).T
  labels[:, 0] = labels[:, 1:].max(axis=1)
  blood_ml = masks.sum(axis=(1, 2, 3)).astype(np.float64) * voxel_ml
  return Phantom(hu=hu, masks=masks, slice_labels=labels, blood_ml=blood_ml,
                 pixel_spacing_mm=(spacing, spacing), slice_thickness_mm=thickness,
                 z_positions_mm=scan.z.astype(np.float64), bleeds=records,
                 mimics=[m for m in MIMICS if m in shown],
                 mimic_slices=mimic_slices, intracranial=intracranial, ventricles=ventricles)
