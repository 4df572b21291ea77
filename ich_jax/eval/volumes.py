"""Blood volumes from masks: per series the reference, ABC/2 and predicted volumes, and their agreement.

Seed 001 compares a CNN's volumes with manual segmentations and with ABC/2, the clinician's estimate;
Dice per subtype is seed 001's, Dice on slices with blood seed 002's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ich_jax import LABELS, SUBTYPES
from ich_jax.eval import metrics as M

_INTRAPARENCHYMAL = LABELS.index("intraparenchymal")


def series_spacing(preds, rows: np.ndarray) -> tuple[float, float, float]:
  """(slice gap, row, col) in mm: the gap from z positions, else the slice thickness."""
  dz = math.nan
  if "z_position" in preds and len(rows) > 1:
    z = np.sort(np.asarray(preds["z_position"], np.float64)[rows])
    dz = float(np.median(np.diff(z)))
  if not dz > 0:
    if "slice_thickness" not in preds:
      raise ValueError(f"series {preds.get('series_id', preds['study_id'])[rows[0]]!r}: no slice gap; the "
                       "predictions need z_position (two or more slices) or slice_thickness for volumes")
    dz = float(np.median(np.asarray(preds["slice_thickness"], np.float64)[rows]))
  dy, dx = np.median(np.asarray(preds["pixel_spacing"], np.float64)[rows], axis=0)
  return dz, float(dy), float(dx)


def series_rows(preds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
  """Series ids (sorted; the study id where there is no series id) and each series' rows in slice order.

  Slice order is slice_index, else z_position, else row order: 3D measures (ABC/2's extent, 3D connected
  components) need neighbouring rows to be neighbouring slices.
  """
  series = np.asarray(preds.get("series_id", preds["study_id"]))
  order_key = np.asarray(preds.get("slice_index", preds.get("z_position", np.arange(len(series)))))
  ids, inverse = np.unique(series, return_inverse=True)
  return ids, np.split(np.lexsort((order_key, inverse)), np.cumsum(np.bincount(inverse))[:-1])


def series_volumes(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
  """Per series with blood in the reference mask: reference, ABC/2 and predicted volumes (mL), Dice.

  None when the predictions carry no reference masks. The reference is the
  labelled mask's voxel volume (seed 001 compares with manual segmentations).
  ABC/2 is measured on the reference mask, as a clinician would on the scan;
  the intraparenchymal column applies it to the intraparenchymal label alone,
  the comparison seed 001 reports (Pearson 0.954 against the CNN's 0.999).
  """
  if "mask" not in preds or "pixel_spacing" not in preds:
    return None
  masks = np.asarray(preds["mask"])
  pred_masks = np.asarray(preds["pred_mask"]) if "pred_mask" in preds else None
  if pred_masks is not None and pred_masks.shape != masks.shape:
    raise ValueError(f"pred_mask shape {pred_masks.shape} != mask shape {masks.shape}")
  ids, rows_of = series_rows(preds)
  table: dict[str, list] = {k: [] for k in ("series_id", "reference_ml", "abc2_ml", "iph_reference_ml", "iph_abc2_ml",
                                            "predicted_ml", "dice", "subtypes")}
  for sid, rows in zip(ids, rows_of):
    ref = masks[rows]
    if not ref.any():
      continue
    spacing = series_spacing(preds, rows)
    iph = ref == _INTRAPARENCHYMAL
    table["series_id"].append(str(sid))
    table["reference_ml"].append(M.volume_ml(ref, spacing))
    table["abc2_ml"].append(M.abc2_ml(ref, spacing))
    table["iph_reference_ml"].append(M.volume_ml(iph, spacing))
    table["iph_abc2_ml"].append(M.abc2_ml(iph, spacing))
    table["subtypes"].append(" ".join(LABELS[int(k)] for k in np.unique(ref) if k))
    if pred_masks is not None:
      table["predicted_ml"].append(M.volume_ml(pred_masks[rows], spacing))
      table["dice"].append(M.dice(pred_masks[rows], ref))
  if pred_masks is None:
    del table["predicted_ml"], table["dice"]
  return {k: np.array(v, dtype=str if k in ("series_id", "subtypes") else np.float64) for k, v in table.items()}


def agreement(reference: np.ndarray, estimate: np.ndarray) -> dict:
  """Seed 001's volume comparison of `estimate` with `reference` (mL, one per series): n, Pearson r, errors.

  Errors are estimate − reference; the relative error divides by the reference, so pass series with blood.
  """
  err = estimate - reference
  return {"n": int(reference.size), "pearson_r": M.pearson_r(estimate, reference) if reference.size else math.nan,
          "mean_error_ml": float(err.mean()) if err.size else math.nan,
          "mean_relative_error": float((err / reference).mean()) if err.size else math.nan,
          "mean_abs_error_ml": float(np.abs(err).mean()) if err.size else math.nan}


def volume_metrics(preds: Mapping[str, np.ndarray]) -> dict | None:
  """Volume agreement (Pearson r, mean signed error) and Dice per subtype; None without masks.

  Dice per subtype averages the 3D Dice of blood (any label) over the series
  that contain the subtype, as seed 001's per-type rows; slice Dice scores
  only slices with reference blood (seed 002), pooled over the split.
  """
  table = series_volumes(preds)
  if table is None:
    return None
  ref = table["reference_ml"]
  iph = table["iph_reference_ml"] > 0
  out = {"n_series_with_blood": int(ref.size), "reference": "labelled mask voxels",
         "abc2": agreement(ref, table["abc2_ml"]),
         "abc2_intraparenchymal": agreement(table["iph_reference_ml"][iph], table["iph_abc2_ml"][iph])}
  if "predicted_ml" in table:
    out["predicted"] = agreement(ref, table["predicted_ml"])
    dice = {"any": {"n_series": int(ref.size), "dice": float(np.nanmean(table["dice"])) if ref.size else math.nan}}
    for name in SUBTYPES:
      has = np.array([name in s.split() for s in table["subtypes"]], bool)
      dice[name] = {"n_series": int(has.sum()), "dice": float(np.nanmean(table["dice"][has])) if has.any() else math.nan}
    # Seed 002 scores slices with reference blood only: Dice's empty=NaN drops slices where both masks are
    # empty, but a false positive on a blood-free slice would still score 0, so select the slices first.
    ref_all = np.asarray(preds["mask"])
    blood = ref_all.reshape(len(ref_all), -1).any(1)
    pred_b, ref_b = np.asarray(preds["pred_mask"])[blood], ref_all[blood]
    per_slice = M.dice(pred_b, ref_b, axis=(1, 2))
    dice["slices_with_blood"] = {"n_slices": int(blood.sum()),
                                 "dice": float(per_slice.mean()) if blood.any() else math.nan,
                                 "jaccard": float(M.jaccard(pred_b, ref_b, axis=(1, 2)).mean())
                                 if blood.any() else math.nan}
    out["dice"] = dice
  return out
