"""A whole study: the scan's coverage, the bleeds, every slice with its noise."""
from __future__ import annotations

import math

import numpy as np

from ich_jax import SUBTYPES
from ich_jax.data.phantom.bleeds import bleed_record, draw_bleed, draw_bleeds, finalize_bleed, render_bleed
from ich_jax.data.phantom.geometry import rot_x, rot_z
from ich_jax.data.phantom.head import anatomy, draw_head
from ich_jax.data.phantom.mimics import MIMICS, draw_mimics
from ich_jax.data.phantom.scanner import Scan
from ich_jax.data.phantom.slices import Study, render_slice, shell_tables
from ich_jax.data.phantom.spec import Phantom, PhantomSpec, check_spec, voxel_volume_ml

# 12-bit CT: the HU values a scanner stores (4096 of them from -1024).
CT_HU_RANGE = (-1024, 3071)
# PhantomSpec.noise_sd_hu is the noise of slices this thick (mm).
NOISE_REFERENCE_MM = 5.0
# The noise tiles are this many pixels (at least) larger than a slice, for shifted windows.
NOISE_PAD_MIN = 8
# The head's offset from the field's centre, per axis, as a fraction of the field of view (uniform +-).
MAX_SHIFT_FRACTION = 0.02
# The rotated head (outer skin) stays within this fraction of the field of view from its centre.
HEAD_FIT_FRACTION = 0.47
# Whole-head coverage: from the skull base (normalised z) to this far under the skin at the vertex (mm).
SKULL_BASE_Z = -0.92
VERTEX_MARGIN_MM = 2.0


def noise_sd(sd_at_5mm: float, thickness_mm: float) -> float:
  """Quantum noise grows as the slice thins: sd ∝ 1/sqrt(thickness) at fixed dose.

  A 0.625 mm reconstruction is about 2.8× noisier than the 5 mm one of the same
  acquisition, which is why thin-slice studies are harder to read.
  """
  return sd_at_5mm * math.sqrt(NOISE_REFERENCE_MM / thickness_mm)


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


def make_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> Phantom:
  """One synthetic head CT study, deterministic in (seed, spec)."""
  check_spec(spec)
  # Independent streams: changing, say, p_hemorrhage leaves the anatomy of a seed unchanged.
  head_rng, scan_rng, bleed_rng, mimic_rng, noise_rng = np.random.default_rng(seed).spawn(5)
  spacing, thickness, R, center, head = _pose(scan_rng, head_rng, spec)
  anat = anatomy(head)
  bleeds = draw_bleeds(bleed_rng, spec, head)
  mimics = draw_mimics(mimic_rng, spec, head)
  z = _slice_centres(scan_rng, spec, head, bleeds, thickness, R, center)
  scan = Scan(spec.matrix, spacing, thickness, z, R, center)
  st = Study(head, anat, scan, mimics, shell_tables(head))
  voxel_ml = voxel_volume_ml((spacing, spacing), thickness)
  masks, per_slice, records = _bleed_masks(bleeds, scan, head, anat, voxel_ml)
  hu, intracranial, ventricles, mimic_slices, shown = _slices(st, per_slice, noise_rng, spec)

  labels = np.zeros((len(z), 6), np.float32)
  labels[:, 1:] = masks.any(axis=(2, 3)).T
  labels[:, 0] = labels[:, 1:].max(axis=1)
  blood_ml = masks.sum(axis=(1, 2, 3)).astype(np.float64) * voxel_ml
  return Phantom(hu=hu, masks=masks, slice_labels=labels, blood_ml=blood_ml,
                 pixel_spacing_mm=(spacing, spacing), slice_thickness_mm=thickness,
                 z_positions_mm=scan.z.astype(np.float64), bleeds=records,
                 mimics=[m for m in MIMICS if m in shown],
                 mimic_slices=mimic_slices, intracranial=intracranial, ventricles=ventricles)


def _pose(scan_rng, head_rng, spec: PhantomSpec):
  """Pixel spacing, slice thickness, the head → scanner rotation and offset, and a head that fits the field."""
  spacing = float(scan_rng.uniform(*spec.pixel_spacing_mm))
  thickness = float(spec.slice_thickness_mm[scan_rng.integers(len(spec.slice_thickness_mm))])
  yaw = scan_rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg)
  pitch = scan_rng.uniform(-spec.max_pitch_deg, spec.max_pitch_deg)
  fov = spec.matrix * spacing
  shift = scan_rng.uniform(-MAX_SHIFT_FRACTION, MAX_SHIFT_FRACTION, size=2) * fov
  # The head (outer skin, rotated; its width is < 0.85 x its length) must fit the field of view.
  turn = abs(math.cos(math.radians(yaw))) + 0.25 * abs(math.sin(math.radians(yaw)))
  head = draw_head(head_rng, (HEAD_FIT_FRACTION * fov - np.abs(shift).max()) / turn)
  return spacing, thickness, rot_z(yaw) @ rot_x(pitch), np.array([shift[0], shift[1], 0.0]), head


def _slice_centres(scan_rng, spec: PhantomSpec, head, bleeds, thickness: float, R, center) -> np.ndarray:
  """Scanner z of every slice: skull base to vertex, or a slab of max_slices around a bleed (or a
  pseudo-bleed site, so slab position says nothing about the label)."""
  z_lo = SKULL_BASE_Z * head.c
  z_hi = head.c + head.skull_mm + head.scalp_mm - VERTEX_MARGIN_MM
  n_full = int(math.ceil((z_hi - z_lo) / thickness))
  if n_full <= spec.max_slices:
    n_slices = n_full
    z0 = z_lo + thickness / 2 + scan_rng.uniform(-0.5, 0.5) * thickness
  else:
    n_slices = spec.max_slices
    slab = n_slices * thickness
    anchor_site = bleeds[0] if bleeds else draw_bleed(
        scan_rng, spec, head, SUBTYPES[scan_rng.integers(len(SUBTYPES))])
    anchor_z = (R @ anchor_site["anchor"] + center)[2] + scan_rng.uniform(-0.3, 0.3) * slab
    z0 = float(np.clip(anchor_z - slab / 2, z_lo, z_hi - slab)) + thickness / 2
  return z0 + thickness * np.arange(n_slices)


def _bleed_masks(bleeds, scan: Scan, head, anat, voxel_ml: float):
  """Masks [5, S, H, W] of the bleeds that hold a voxel centre, their patches per slice (for the HU), their records."""
  S, H = len(scan.z), scan.matrix
  masks = np.zeros((len(SUBTYPES), S, H, H), bool)
  per_slice = {k: [] for k in range(S)}
  records = []
  for b in bleeds:
    b = finalize_bleed(b, scan, head, anat)
    patches = render_bleed(b, scan, head, anat)
    voxels = sum(int(np.count_nonzero(p[2])) for p in patches.values())
    if voxels == 0:
      continue   # outside the covered slab, or too small to hold a voxel centre
    i = SUBTYPES.index(b["subtype"])
    for k, (box, frac, inside, edema) in patches.items():
      masks[i, k, box[0]:box[1], box[2]:box[3]] |= inside
      per_slice[k].append((box, frac, inside, edema, b["hu"], b.get("edema_hu")))
    records.append(bleed_record(b, voxels, voxel_ml, scan))
  return masks, per_slice, records


def _slices(st: Study, per_slice: dict, noise_rng, spec: PhantomSpec):
  """Every slice rendered, with its noise and the study's calibration drift: int16 HU, the intracranial and
  ventricle masks, which slices show a mimic and which mimics are shown."""
  S, H = len(st.scan.z), st.scan.matrix
  hu = np.empty((S, H, H), np.int16)
  intracranial = np.zeros((S, H, H), bool)
  ventricles = np.zeros((S, H, H), bool)
  mimic_slices = np.zeros(S, bool)
  shown = set()
  sd = noise_sd(float(noise_rng.uniform(*spec.noise_sd_hu)), st.scan.thickness)
  offset = float(noise_rng.uniform(*spec.hu_offset))
  pad = max(NOISE_PAD_MIN, H // 8)
  bank = _noise_bank(noise_rng, H, pad)
  picks = noise_rng.integers(0, [2, pad + 1, pad + 1, 2, 2], size=(S, 5))
  for k in range(S):
    img, ic, vent, names = render_slice(k, st, per_slice[k])
    tile, dr, dc, fr, fc = picks[k]
    noise = bank[tile, dr:dr + H, dc:dc + H]
    noise = noise[::-1] if fr else noise
    noise = noise[:, ::-1] if fc else noise
    img += np.float32(sd) * noise
    img += np.float32(offset)
    np.rint(img, out=img)
    np.clip(img, *CT_HU_RANGE, out=img)
    hu[k] = img
    intracranial[k] = ic
    ventricles[k] = vent
    mimic_slices[k] = bool(names)
    shown |= names
  return hu, intracranial, ventricles, mimic_slices, shown
