"""One slice's HU: brain, deep structures, falx, bleeds, mimics, skull base and the skull's layers."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ich_jax.data.phantom.geometry import Plane, ell, ell_box, ell_boxes, ell_fraction, embed, paint, ramp, union
from ich_jax.data.phantom.head import ZCLAMP, Anatomy, Head, dcsf, falx_edge, fields, tentorium
from ich_jax.data.phantom.mimics import DENSE_DURA_HU, Mimics
from ich_jax.data.phantom.scanner import Scan


def shell_tables(head: Head):
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


def _shell_footprint(zn: float, head: Head, px: float, t: float) -> float:
  """How far the normalised radius changes across a voxel at the vault wall (rho units).

  In-plane the pixel crosses the wall; along z the slab crosses it too where the
  wall is tilted (towards the vertex), which is why a thick slice near the top
  of the head shows a broad, blurred skull.
  """
  if zn < -ZCLAMP:       # the vertical wall around the posterior fossa
    return px / head.r_mean
  zn = min(abs(zn), 0.999)
  return px * math.sqrt(max(1.0 - zn * zn, 0.05)) / head.r_mean + t * zn / head.c


def _head_box(plane: Plane, head: Head, thick: float):
  """Pixel box of the head (outer skin) on this slice, or None above the vertex."""
  grow = (head.skull_mm + head.scalp_mm + 2.0) / head.r_mean
  skin = ell(np.zeros(3), head.abc * (1 + grow))
  box = ell_box(plane, skin, thick)
  corners = plane.linear(np.array([0, 0, 1.0]))[[0, 0, -1, -1], [0, -1, 0, -1]]
  if corners.min() < -ZCLAMP * head.c:
    # Below the clamp the wall is vertical: the section there is the clamp level's
    # (a slab reaching the equator bounds it, generously).
    wide = ell_box(plane, skin, 4 * head.c)
    box = wide if box is None else tuple(min(u, v) if i % 2 == 0 else max(u, v)
                                         for i, (u, v) in enumerate(zip(box, wide)))
  return box


def _midline_band(plane: Plane, head: Head):
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
class Study:
  head: Head
  anat: Anatomy
  scan: Scan
  mimics: Mimics
  tables: tuple        # shell_tables(head)


def render_slice(k: int, st: Study, bleed_patches: list):
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
  fl = fields(plane, head, band)

  # Brain: white matter, the grey ribbon around every CSF surface, CSF.
  w = px + 0.35 * t
  dc = dcsf(plane, head, fl)
  inner = np.full(plane.shape, head.wm_hu, np.float32)
  inner += np.float32(head.gm_hu - head.wm_hu) * ramp(np.float32(head.gm_mm) - dc, w)
  inner += np.float32(head.csf_hu - head.gm_hu) * ramp(-dc, w)

  if fl.dz is not None:   # posterior fossa: cerebellum below the tentorium
    tent = tentorium(fl.xn, fl.yn)
    zdist = (tent - fl.zn) * np.float32(head.c)
    infra = ramp(zdist, t + 0.5 * px) * fl.post
    if float(infra.max()) > 0:
      # Folia: thin fissures roughly parallel to the surface, faint on CT.
      folia = np.sin(fl.depth * np.float32(2 * math.pi / 6.0) + np.sin(fl.xn * np.float32(7.0)) * np.float32(2.0)
                     + np.sin(fl.yn * np.float32(11.0)))
      folia_csf = np.float32(0.3) * (np.float32(1.0) - np.minimum(fl.depth * np.float32(1 / 9.0), 1.0)) \
          - np.abs(folia)
      cb = np.full(plane.shape, head.wm_hu, np.float32)
      cb += np.float32(head.gm_hu - 1.0 - head.wm_hu) * ramp(np.float32(14.0) - fl.depth, 4.0)
      cb += np.float32(0.6 * (head.csf_hu - head.gm_hu)) * ramp(folia_csf, 0.2 + 0.05 * t) * ramp(fl.depth, w)
      paint(inner, infra, 0.0)
      inner += infra * cb
      # The tentorium itself: a dural sheet, a V on axial slices.
      notch = np.float32(0.25) * (np.float32(1.0) - np.clip((fl.yn - 0.05) * np.float32(1 / 0.35), 0.0, 1.0))
      sheet = ramp(np.float32(0.8) - np.abs(zdist), t + 0.5 * px) * fl.post * (np.abs(fl.xn) > notch)
      paint(inner, sheet, st.mimics.tentorium_hu)
      if st.mimics.tentorium_hu > DENSE_DURA_HU and float(sheet.max()) > 0.3:
        shown.add("dense_tentorium")

  def paint_union(ells, hu, mask_out=None):
    patch = union(plane, ells, t)
    if patch is None:
      return
    (a0, a1, b0, b1), f, m = patch
    paint(inner[a0:a1, b0:b1], f, hu)
    if mask_out is not None:
      mask_out[r0 + a0:r0 + a1, c0 + b0:c0 + b1] |= m

  paint_union(anat.deep_grey, head.deep_gm_hu)
  paint_union(anat.brainstem, head.stem_hu)
  cist = union(plane, anat.cisterns, t)
  if cist is not None:
    (a0, a1, b0, b1), f, _ = cist
    stem = embed(plane.shape, union(plane, anat.brainstem, t))[0][a0:a1, b0:b1]
    paint(inner[a0:a1, b0:b1], f * (np.float32(1.0) - stem), head.csf_hu)
  paint_union(anat.ventricles, head.csf_hu, ventricles)

  # Falx and superior sagittal sinus, in the midline band.
  b0, b1 = band
  if b1 > b0:
    xmm = np.abs(fl.xn[:, b0:b1]) * np.float32(head.a)
    vault_depth = (np.float32(1.0) - fl.rho[:, b0:b1]) * np.float32(head.r_mean)
    half = np.float32(0.5 * head.falx_mm) + np.maximum(np.float32(7.0) - vault_depth, 0.0) * np.float32(0.5)
    h = np.minimum(half - xmm, (fl.zn[:, b0:b1] - falx_edge(fl.yn[:, b0:b1])) * np.float32(head.c))
    f = ramp(h, px)
    paint(inner[:, b0:b1], f, st.mimics.falx_hu)
    if st.mimics.falx_hu > DENSE_DURA_HU and float(f.max()) > 0.5:
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
      paint(view, edema[sel], edema_hu)
    paint(view, frac[sel], hu)

  calcs = st.mimics.calcifications
  for (name, e), eb in zip(calcs, ell_boxes(plane, [e for _, e in calcs], t) if calcs else ()):
    if eb is None:
      continue
    f, _ = ell_fraction(plane.sub(eb), e, t)
    paint(inner[eb[0]:eb[1], eb[2]:eb[3]], f, e.hu)
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
      patch = union(plane, ells, t)
      if patch is not None:
        (a0, a1, b0, b1), f, _ = patch
        paint(base[a0:a1, b0:b1], f, hu)
    paint(base, ramp(fl.dz + fl.plate, fz), 0.9 * head.bone_hu)
    inner -= base
    inner *= ramp(fl.dz, fz)
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


def _beam_hardening(inner, plane: Plane, head: Head, bh: dict, zn: float) -> bool:
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
