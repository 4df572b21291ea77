"""Hemorrhages: drawn per subtype and size bin, fixed on the scan's voxel grid, rendered slice by slice."""
from __future__ import annotations

import math

import numpy as np

from ich_jax import SIZE_BINS, SUBTYPES, size_bin
from ich_jax.data.phantom.geometry import SLAB_BLUR, Plane, ell, embed, ramp, union
from ich_jax.data.phantom.head import Anatomy, Head, dcsf, fields
from ich_jax.data.phantom.scanner import Scan, sub_offsets
from ich_jax.data.phantom.spec import PhantomSpec


# Volume range (mL) a bleed's target is drawn from, log-uniform, per size bin
# (seed 001's bins: punctate < 0.01, small 0.01–5, medium 5–25, large > 25 mL).
# The reported bin comes from the volume actually rendered, not this target.
BIN_TARGET_ML = {"punctate": (0.002, 0.008), "small": (0.02, 4.5), "medium": (5.5, 24.0),
                 "large": (27.0, 85.0)}
# Sites (and their probabilities) of intraparenchymal and subarachnoid bleeds.
IPH_SITES = {"deep": 0.45, "lobar": 0.40, "cerebellar": 0.12, "pontine": 0.03}
SAH_SITES = {"basal": 0.35, "sylvian": 0.25, "convexity": 0.3, "interhemispheric": 0.1}


def _lateral_direction(rng, side, azimuth_deg, elevation):
  """Unit direction in normalised coordinates: azimuth from lateral, elevation = normalised z."""
  az = math.radians(rng.uniform(-azimuth_deg, azimuth_deg))
  e = rng.uniform(*elevation)
  h = math.sqrt(1 - e * e)
  return np.array([side * h * math.cos(az), h * math.sin(az), e])


def _surface(head, u):
  """Inner-table point along normalised direction u."""
  return head.abc * u


def draw_bleed(rng, spec: PhantomSpec, head: Head, subtype: str) -> dict:
  """Subtype, size and site of one bleed (geometry is fixed later, on the scan's voxel grid)."""
  if spec.size_bin_probs_by_subtype is None:
    p = np.asarray(spec.size_bin_probs, np.float64)
  else:
    p = np.asarray(spec.size_bin_probs_by_subtype[SUBTYPES.index(subtype)], np.float64)
  bin_ = SIZE_BINS[rng.choice(len(SIZE_BINS), p=p / p.sum())]
  lo, hi = BIN_TARGET_ML[bin_]
  target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  side = 1.0 if rng.random() < 0.5 else -1.0
  b = {"subtype": subtype, "target_ml": target, "side": side}
  b.update(_SITES[subtype](rng, spec, head, target, side))
  return b


def _epidural(rng, spec: PhantomSpec, head: Head, target: float, side: float) -> dict:
  # Temporoparietal, under the squama (middle meningeal artery); lens 0.3–0.55 as thick as wide.
  u = _lateral_direction(rng, side, 60, (-0.2, 0.55))
  k = rng.uniform(0.3, 0.55)
  radius = min((2 * target * 1000 / (math.pi * k)) ** (1 / 3), 48.0)
  thick = max(target * 1000 * 2 / (math.pi * radius ** 2), 0.8)
  b = dict(u=u, radius_mm=radius, thickness_mm=min(thick, 30.0), hu=rng.uniform(60, 85), site="temporoparietal")
  b["anchor"] = _surface(head, u) * (1 - 0.5 * b["thickness_mm"] / np.linalg.norm(_surface(head, u)))
  return b


def _subdural(rng, spec: PhantomSpec, head: Head, target: float, side: float) -> dict:
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
  return dict(u=u, radius_mm=radius, thickness_mm=thick, hu=hu, isodense=iso, site="convexity",
              anchor=_surface(head, u) * (1 - 0.5 * thick / np.linalg.norm(_surface(head, u))))


def _intraparenchymal(rng, spec: PhantomSpec, head: Head, target: float, side: float) -> dict:
  a_, b_, c_ = head.a, head.b, head.c
  r = (3 * target * 1000 / (4 * math.pi)) ** (1 / 3)
  site = rng.choice(list(IPH_SITES), p=list(IPH_SITES.values()))
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
  return dict(anchor=np.asarray(center, np.float64), semi=semi, yaw=rng.uniform(0, 180),
              tilt=rng.uniform(-25, 25), lobes=rng.normal(size=(3, 3)), lobe_k=rng.uniform(2, 4.5, size=3),
              lobe_phase=rng.uniform(0, 2 * math.pi, size=3),
              lobe_amp=rng.uniform(0.04, 0.12, size=3) if r > 2.0 else np.zeros(3),
              edema=bool(rng.random() < spec.p_edema and r > 3.0), edema_rim=rng.uniform(0.2, 0.5),
              edema_hu=head.wm_hu - rng.uniform(6, 12), hu=rng.uniform(58, 85), site=site)


def _intraventricular(rng, spec: PhantomSpec, head: Head, target: float, side: float) -> dict:
  return dict(hu=rng.uniform(52, 80), site="ventricles",
              anchor=np.array([side * 0.25 * head.a, 0.50 * head.b, 0.08 * head.c]))


def _subarachnoid(rng, spec: PhantomSpec, head: Head, target: float, side: float) -> dict:
  a_, b_, c_ = head.a, head.b, head.c
  site = rng.choice(list(SAH_SITES), p=list(SAH_SITES.values()))
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
  return dict(anchor=np.asarray(center, np.float64), radius_mm=radius, widen_mm=rng.uniform(0.3, 1.2),
              hu=rng.uniform(55, 80), site=site)


# Where and how each subtype is drawn (its site, shape and density), by subtype.
_SITES = {"epidural": _epidural, "subdural": _subdural, "intraparenchymal": _intraparenchymal,
          "intraventricular": _intraventricular, "subarachnoid": _subarachnoid}


def draw_bleeds(rng, spec: PhantomSpec, head: Head) -> list[dict]:
  """A study's bleeds: none with probability 1 - p_hemorrhage, else one, then more while p_extra_bleed says so."""
  if rng.random() >= spec.p_hemorrhage:
    return []
  p = np.asarray(spec.subtype_probs, np.float64)
  p = p / p.sum()
  bleeds = [draw_bleed(rng, spec, head, SUBTYPES[rng.choice(len(SUBTYPES), p=p)])]
  while len(bleeds) < spec.max_bleeds and rng.random() < spec.p_extra_bleed:
    bleeds.append(draw_bleed(rng, spec, head, SUBTYPES[rng.choice(len(SUBTYPES), p=p)]))
  return bleeds


def _ivh_level(b, scan: Scan, head: Head, anat: Anatomy) -> float:
  """Scanner-y level above which the ventricles hold the target volume (blood layers posteriorly, supine)."""
  ys = []
  gravity = scan.R[1]   # scanner +y (towards the table) in head coordinates
  for k in range(len(scan.z)):
    plane = scan.plane(k)
    patch = union(plane, anat.ventricles, scan.thickness)
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


def finalize_bleed(b, scan: Scan, head: Head, anat: Anatomy) -> dict:
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


def _bleed_field(b, plane: Plane, head: Head, anat: Anatomy, scan: Scan, thick: float):
  """(blood fraction, centre-inside, edema fraction or None) of one bleed on a (sub-)plane."""
  px = scan.spacing
  st = b["subtype"]
  if st in ("epidural", "subdural"):
    fl = fields(plane, head, band=(0, 0))
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
    return ramp(h, px), inside, None
  if st == "intraparenchymal":
    e = ell(b["anchor"], b["semi"], b["yaw"], b["tilt"])
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
    fl = fields(plane, head, band=(0, 0))
    vent = union(plane, anat.ventricles, thick)
    vfrac, vin = embed(plane.shape, vent)
    inside = (h >= 0) & fl.intracranial & ~vin
    frac = ramp(h, px) * (np.float32(1.0) - vfrac)
    edema = None
    if b["edema"]:
      edema = ramp((lobed * np.float32(1 + b["edema_rim"]) - rho) * r_mm, 2 * px) * (np.float32(1.0) - vfrac)
    return frac, inside, edema
  if st == "intraventricular":
    vent = union(plane, anat.ventricles, thick)
    vfrac, vin = embed(plane.shape, vent)
    if not np.isfinite(b["level"]):
      return vfrac, vin, None
    gravity = scan.R[1]
    y = plane.linear(gravity, -b["level"])
    width = px + thick * abs(float(gravity @ plane.normal))
    return vfrac * ramp(y, width), vin & (y >= 0), None
  # Subarachnoid: blood fills (and slightly distends) the CSF spaces inside a ball.
  fl = fields(plane, head)
  widen = b["widen_mm"]
  dc = dcsf(plane, head, fl, widen)
  space = ramp(-dc, px + SLAB_BLUR * thick)
  space_in = dc <= 0
  grown = tuple(ell(e.center, 1.0 / np.linalg.norm(e.M, axis=1) + widen) for e in anat.cisterns)
  cist, cin = embed(plane.shape, union(plane, grown, thick))
  stem, sin_ = embed(plane.shape, union(plane, anat.brainstem, thick))
  cist *= np.float32(1.0) - stem
  np.maximum(space, cist, out=space)
  space_in |= cin & ~sin_
  vfrac, vin = embed(plane.shape, union(plane, anat.ventricles, thick))
  d = plane.linear(np.zeros(3))   # distance to the ball's centre
  for i in range(3):
    t = plane.linear(np.eye(3)[i], -float(b["anchor"][i]))
    d += t * t
  ball = np.float32(b["radius_mm"]) - np.sqrt(d)
  inside = space_in & (ball >= 0) & ~vin & fl.intracranial
  frac = space * ramp(ball, px) * (np.float32(1.0) - vfrac)
  return frac, inside, None


def _plane_box(plane: Plane, center, radius):
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


def render_bleed(b, scan: Scan, head: Head, anat: Anatomy):
  """Per-slice patches {k: (box, blood fraction, mask, edema fraction)}; partial volume from sub-slices."""
  offsets = sub_offsets(scan.thickness)
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


def bleed_record(b, voxels: int, voxel_ml: float, scan: Scan) -> dict:
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
