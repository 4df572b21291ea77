"""What a phantom study is drawn from (`PhantomSpec`) and what it holds (`Phantom`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ich_jax import SIZE_BINS, SUBTYPES

# A head (outer skin, with room to rotate and shift) needs this much field of view.
MIN_FOV_MM = 180.0

# Seed 001 Table 1 (cross-validation cohort, 901 hemorrhages in 10,159 exams):
# counts per size bin (punctate, small, medium, large) for IPH 15/63/88/192,
# EDH/SDH 3/49/79/188, SAH 34/52/53/85. IVH has no row there; it takes the
# pooled mix of the three (52/164/220/465). Rows in SUBTYPES order.
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
  subtype_probs: tuple[float, ...] = (0.14, 0.26, 0.14, 0.20, 0.26)   # per bleed, in SUBTYPES order
  p_extra_bleed: float = 0.3                            # P(one more bleed), repeated up to max_bleeds
  max_bleeds: int = 3
  size_bin_probs: tuple[float, ...] = (0.06, 0.40, 0.32, 0.22)   # punctate, small, medium, large
  # Per subtype (5 rows in SUBTYPES order, each like size_bin_probs, any scale);
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
  """One synthetic study, in HU, with everything it was drawn with that a test or a builder reads."""
  hu: np.ndarray                 # int16 [S, H, W]
  masks: np.ndarray              # bool [5, S, H, W], SUBTYPES order; voxel centre inside the bleed
  slice_labels: np.ndarray       # float32 [S, 6]: "any", then SUBTYPES
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
    return voxels * voxel_volume_ml(self.pixel_spacing_mm, self.slice_thickness_mm)


def voxel_volume_ml(pixel_spacing_mm, gap_mm) -> float:
  """mL of one voxel: (row, col) spacing and the slice gap in mm."""
  return pixel_spacing_mm[0] * pixel_spacing_mm[1] * gap_mm / 1000.0


def check_spec(spec: PhantomSpec):
  """Refuses a spec no study can be drawn from, naming the field and its value."""
  lo, hi = spec.pixel_spacing_mm
  if not 0 < lo <= hi:
    raise ValueError(f"PhantomSpec.pixel_spacing_mm={spec.pixel_spacing_mm}: need 0 < low <= high")
  if spec.matrix * lo < MIN_FOV_MM:
    raise ValueError(f"PhantomSpec: matrix={spec.matrix} at pixel_spacing_mm={spec.pixel_spacing_mm} gives a "
                     f"{spec.matrix * lo:.0f} mm field of view; a head needs >= {MIN_FOV_MM:.0f} mm (scale the "
                     "spacing)")
  if not spec.slice_thickness_mm or min(spec.slice_thickness_mm) <= 0:
    raise ValueError(f"PhantomSpec.slice_thickness_mm={spec.slice_thickness_mm}: need positive choices")
  if spec.max_slices < 1:
    raise ValueError(f"PhantomSpec.max_slices={spec.max_slices}: need >= 1")
  if len(spec.subtype_probs) != len(SUBTYPES) or len(spec.size_bin_probs) != len(SIZE_BINS):
    raise ValueError("PhantomSpec: subtype_probs needs 5 entries (SUBTYPES), size_bin_probs 4 "
                     "(punctate, small, medium, large)")
  by_subtype = spec.size_bin_probs_by_subtype
  if by_subtype is not None and (len(by_subtype) != len(SUBTYPES) or any(
      len(row) != len(SIZE_BINS) or min(row) < 0 or sum(row) <= 0 for row in by_subtype)):
    raise ValueError(f"PhantomSpec.size_bin_probs_by_subtype={by_subtype}: need 5 rows (SUBTYPES) of "
                     "4 non-negative weights (punctate, small, medium, large)")
