"""One slice's HU: brain, deep structures, falx, bleeds, mimics, skull base and the skull's layers."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ich_jax.data.phantom.geometry import SLAB_BLUR, Plane, ell, ell_box, ell_boxes, ell_fraction, embed
from ich_jax.data.phantom.geometry import paint, ramp, union
from ich_jax.data.phantom.head import ZCLAMP, Anatomy, Head, dcsf, falx_edge, fields, tentorium
from ich_jax.data.phantom.mimics import DENSE_DURA_HU, Mimics
from ich_jax.data.phantom.scanner import Scan

AIR_HU = -1000.0
# Below the cranial floor (HU): orbital fat, the globes' vitreous, the air of the sinuses and mastoid cells; the
# skull base's bone as a fraction of the vault's cortical bone.
ORBITAL_FAT_HU = -90.0
GLOBE_HU = 12.0
SINUS_AIR_HU = -950.0
SKULL_BASE_BONE = 0.9
# The radial profile of scalp and skull (`shell_tables`): this many samples, from this deep inside the inner
# table (mm) to this far outside the skin (mm).
SHELL_SAMPLES = 4096
SHELL_INSIDE_MM = 24.0
SHELL_OUTSIDE_MM = 4.0
# Beam hardening's cupping (the brain's outer few mm read a little dense) fades over this depth (mm).
CUPPING_DEPTH_MM = 4.0
# The cerebellum: folia every ~6 mm, its cortex the outer ~14 mm.
FOLIA_PERIOD_MM = 6.0
CEREBELLAR_CORTEX_MM = 14.0
# The superior sagittal sinus widens the falx within this depth (mm) under the vault.
SAGITTAL_SINUS_MM = 7.0
# A dense structure counts as shown on a slice (Phantom.mimics, mimic_slices) where it fills more than this
# fraction of some voxel.
SHOWN_FRACTION = {"dense_tentorium": 0.3, "dense_falx": 0.5, "calcification": 0.25}
# Beam hardening between the petrous bones (HU at the skull base): drawn from this amplitude, shown from that.
BEAM_HARDENING_MIN_HU = 1.0
BEAM_HARDENING_SHOWN_HU = 5.0


def shell_tables(head: Head):
  """Unblurred radial profiles: (rho grid, HU of the shell with 0 inside, inside indicator, cupping)."""
  rm = head.r_mean
  lo, hi = 1.0 - SHELL_INSIDE_MM / rm, 1.0 + (head.skull_mm + head.scalp_mm + SHELL_OUTSIDE_MM) / rm
  rho = np.linspace(lo, hi, SHELL_SAMPLES)
  mm = (rho - 1.0) * rm        # mm outside the inner table
  sk, sc = head.skull_mm, head.scalp_mm
  hu = np.full(rho.shape, AIR_HU)
  hu[mm < sk + sc] = head.skin_hu
  hu[mm < sk + 0.65 * sc] = head.fat_hu          # subcutaneous fat, then galea / muscle over the bone
  hu[mm < sk + 0.3 * sc] = head.soft_hu
  hu[mm < sk] = head.bone_hu
  hu[mm < sk - head.outer_table_mm] = head.diploe_hu
  hu[mm < head.inner_table_mm] = head.bone_hu
  inside = (mm < 0).astype(np.float64)
  hu[mm < 0] = 0.0
  # Beam hardening ("cupping" near bone): the brain's outer few mm read a little dense.
  cup = np.where(mm < 0, head.cupping_hu * np.exp(np.minimum(mm, 0) / CUPPING_DEPTH_MM), 0.0)
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
  """What every slice of a study is rendered from."""
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
  img = np.full((n, n), AIR_HU, np.float32)
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
  w = px + SLAB_BLUR * t
  inner = _brain(plane, head, fl, w)
  if fl.dz is not None and _posterior_fossa(inner, fl, head, st.mimics.tentorium_hu, w, t, px):
    shown.add("dense_tentorium")
  vent = _deep_structures(inner, plane, anat, head, t)
  if _falx(inner, fl, head, band, st.mimics.falx_hu, px):
    shown.add("dense_falx")
  _paint_bleeds(inner, bleed_patches, r0, c0)
  shown |= _calcifications(inner, plane, st.mimics.calcifications, t)
  if st.mimics.beam_hardening is not None and fl.dz is not None:
    if _beam_hardening(inner, plane, head, st.mimics.beam_hardening, float(fl.zn.mean())):
      shown.add("beam_hardening")
  if fl.dz is not None:
    _skull_base(inner, plane, fl, anat, head, t, px)
  img[r0:r1, c0:c1] = _within_skull(inner, fl, head, st.tables, px, t)
  intracranial[r0:r1, c0:c1] = fl.intracranial
  ventricles[r0:r1, c0:c1] = vent & fl.intracranial
  return img, intracranial, ventricles, shown


def _brain(plane: Plane, head: Head, fl, w: float) -> np.ndarray:
  """White matter, the grey ribbon around every CSF surface, CSF: the HU inside the skull before the rest."""
  dc = dcsf(plane, head, fl)
  inner = np.full(plane.shape, head.wm_hu, np.float32)
  inner += np.float32(head.gm_hu - head.wm_hu) * ramp(np.float32(head.gm_mm) - dc, w)
  inner += np.float32(head.csf_hu - head.gm_hu) * ramp(-dc, w)
  return inner


def _posterior_fossa(inner, fl, head: Head, tentorium_hu: float, w: float, t: float, px: float) -> bool:
  """The cerebellum below the tentorium, and the tentorium itself; True where a dense tentorium shows."""
  tent = tentorium(fl.xn, fl.yn)
  zdist = (tent - fl.zn) * np.float32(head.c)
  infra = ramp(zdist, t + 0.5 * px) * fl.post
  if not float(infra.max()) > 0:
    return False
  # Folia: thin fissures roughly parallel to the surface, faint on CT.
  folia = np.sin(fl.depth * np.float32(2 * math.pi / FOLIA_PERIOD_MM)
                 + np.sin(fl.xn * np.float32(7.0)) * np.float32(2.0) + np.sin(fl.yn * np.float32(11.0)))
  folia_csf = np.float32(0.3) * (np.float32(1.0) - np.minimum(fl.depth * np.float32(1 / 9.0), 1.0)) \
      - np.abs(folia)
  cb = np.full(inner.shape, head.wm_hu, np.float32)
  cb += np.float32(head.gm_hu - 1.0 - head.wm_hu) * ramp(np.float32(CEREBELLAR_CORTEX_MM) - fl.depth, 4.0)
  cb += np.float32(0.6 * (head.csf_hu - head.gm_hu)) * ramp(folia_csf, 0.2 + 0.05 * t) * ramp(fl.depth, w)
  paint(inner, infra, 0.0)
  inner += infra * cb
  # The tentorium itself: a dural sheet, a V on axial slices.
  notch = np.float32(0.25) * (np.float32(1.0) - np.clip((fl.yn - 0.05) * np.float32(1 / 0.35), 0.0, 1.0))
  sheet = ramp(np.float32(0.8) - np.abs(zdist), t + 0.5 * px) * fl.post * (np.abs(fl.xn) > notch)
  paint(inner, sheet, tentorium_hu)
  return tentorium_hu > DENSE_DURA_HU and float(sheet.max()) > SHOWN_FRACTION["dense_tentorium"]


def _deep_structures(inner, plane: Plane, anat: Anatomy, head: Head, t: float) -> np.ndarray:
  """Deep grey matter, brainstem, cisterns and ventricles; returns the ventricles' voxel-centre mask."""

  def paint_union(ells, hu):
    patch = union(plane, ells, t)
    if patch is not None:
      (a0, a1, b0, b1), f, m = patch
      paint(inner[a0:a1, b0:b1], f, hu)
    return patch

  paint_union(anat.deep_grey, head.deep_gm_hu)
  paint_union(anat.brainstem, head.stem_hu)
  cist = union(plane, anat.cisterns, t)
  if cist is not None:
    (a0, a1, b0, b1), f, _ = cist
    stem = embed(plane.shape, union(plane, anat.brainstem, t))[0][a0:a1, b0:b1]
    paint(inner[a0:a1, b0:b1], f * (np.float32(1.0) - stem), head.csf_hu)
  return embed(plane.shape, paint_union(anat.ventricles, head.csf_hu))[1]


def _falx(inner, fl, head: Head, band, falx_hu: float, px: float) -> bool:
  """Falx and superior sagittal sinus, in the midline band; True where a dense falx shows."""
  b0, b1 = band
  if b1 <= b0:
    return False
  xmm = np.abs(fl.xn[:, b0:b1]) * np.float32(head.a)
  vault_depth = (np.float32(1.0) - fl.rho[:, b0:b1]) * np.float32(head.r_mean)
  half = (np.float32(0.5 * head.falx_mm)
          + np.maximum(np.float32(SAGITTAL_SINUS_MM) - vault_depth, 0.0) * np.float32(0.5))
  h = np.minimum(half - xmm, (fl.zn[:, b0:b1] - falx_edge(fl.yn[:, b0:b1])) * np.float32(head.c))
  f = ramp(h, px)
  paint(inner[:, b0:b1], f, falx_hu)
  return falx_hu > DENSE_DURA_HU and float(f.max()) > SHOWN_FRACTION["dense_falx"]


def _paint_bleeds(inner, bleed_patches: list, r0: int, c0: int) -> None:
  """The bleeds' (and edema's) partial volumes, their boxes clipped to the head box at (r0, c0)."""
  for pbox, frac, _, edema, hu, edema_hu in bleed_patches:
    a0, a1, q0, q1 = pbox[0] - r0, pbox[1] - r0, pbox[2] - c0, pbox[3] - c0
    # Clip to the head box (a bleed never leaves the head; its box may).
    sa0, sa1, sq0, sq1 = max(a0, 0), min(a1, inner.shape[0]), max(q0, 0), min(q1, inner.shape[1])
    if sa1 <= sa0 or sq1 <= sq0:
      continue
    sel = (slice(sa0 - a0, sa1 - a0), slice(sq0 - q0, sq1 - q0))
    view = inner[sa0:sa1, sq0:sq1]
    if edema is not None:
      paint(view, edema[sel], edema_hu)
    paint(view, frac[sel], hu)


def _calcifications(inner, plane: Plane, calcs: tuple, t: float) -> set:
  """The calcifications' partial volumes; the names of those that show on this slice."""
  shown = set()
  for (name, e), eb in zip(calcs, ell_boxes(plane, [e for _, e in calcs], t) if calcs else ()):
    if eb is None:
      continue
    f, _ = ell_fraction(plane.sub(eb), e, t)
    paint(inner[eb[0]:eb[1], eb[2]:eb[3]], f, e.hu)
    if float(f.max()) > SHOWN_FRACTION["calcification"]:
      shown.add(name)
  return shown


def _skull_base(inner, plane: Plane, fl, anat: Anatomy, head: Head, t: float, px: float) -> None:
  """Below the cranial floor: skull-base bone, then orbits, sinuses and the soft tissue of face and neck."""
  fz = t + px
  base = np.full(plane.shape, head.soft_hu, np.float32)
  for ells, hu in ((anat.face_fat, ORBITAL_FAT_HU), (anat.globes, GLOBE_HU), (anat.air_cells, SINUS_AIR_HU)):
    patch = union(plane, ells, t)
    if patch is not None:
      (a0, a1, b0, b1), f, _ = patch
      paint(base[a0:a1, b0:b1], f, hu)
  paint(base, ramp(fl.dz + fl.plate, fz), SKULL_BASE_BONE * head.bone_hu)
  inner -= base
  inner *= ramp(fl.dz, fz)
  inner += base


def _within_skull(inner, fl, head: Head, tables: tuple, px: float, t: float) -> np.ndarray:
  """The head box's HU: `inner` inside the inner table, the skull's and scalp's layers (blurred over the
  voxel's footprint on them) outside."""
  rho_grid, shell, inside_w = tables
  width = _shell_footprint(float(fl.zn[inner.shape[0] // 2, inner.shape[1] // 2]), head, px, t)
  s_tab = _blurred(rho_grid, shell, width)
  v_tab = _blurred(rho_grid, inside_w, width)
  idx = (fl.rho - np.float32(rho_grid[0])) * np.float32((len(rho_grid) - 1) / (rho_grid[-1] - rho_grid[0]))
  np.clip(idx, 0, len(rho_grid) - 1, out=idx)
  idx = idx.astype(np.int32)
  out = np.take(v_tab, idx)
  out *= inner
  out += np.take(s_tab, idx)
  return out


def _beam_hardening(inner, plane: Plane, head: Head, bh: dict, zn: float) -> bool:
  """Raised HU and streaks between the petrous bones (posterior fossa, skull-base slices)."""
  zenv = math.exp(-((zn + 0.55) / 0.18) ** 2)
  if bh["amp"] * zenv < BEAM_HARDENING_MIN_HU:
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
  return bh["amp"] * zenv >= BEAM_HARDENING_SHOWN_HU
