"""Prediction sets for the evaluation tests: studies with and without blood, and series with masks."""
import csv

import numpy as np

from ich_jax import LABELS

N_BOOT = 40


def preds(seed=0, n_studies=24, n_slices=6, noise=1.0):
  """Studies of n_slices slices; half with blood on some slices, one subtype per study."""
  rng = np.random.default_rng(seed)
  rows = {"study_id": [], "series_id": [], "slice_index": [], "labels": [], "study_blood_ml": [], "mimic": []}
  volumes = [0.005, 2.0, 12.0, 40.0]
  for s in range(n_studies):
    bleed = s % 2 == 1
    subtype = 1 + (s // 2) % 5
    ml = volumes[(s // 2) % 4] if bleed else 0.0
    for k in range(n_slices):
      lab = np.zeros(6, np.float32)
      if bleed and 1 <= k <= 3:
        lab[0] = lab[subtype] = 1
      rows["study_id"].append(f"1.2.3.{s}")
      rows["series_id"].append(f"1.2.3.{s}.1")
      rows["slice_index"].append(k)
      rows["labels"].append(lab)
      rows["study_blood_ml"].append(ml)
      rows["mimic"].append(int(rng.random() < 0.2))
  out = {k: np.array(v) for k, v in rows.items()}
  out["labels"] = out["labels"].astype(np.float32)
  logits = 2.2 * out["labels"] - 1.2 + noise * rng.normal(size=out["labels"].shape)
  out["probabilities"] = (1 / (1 + np.exp(-logits))).astype(np.float32)
  out["slice_index"] = out["slice_index"].astype(np.int32)
  out["study_blood_ml"] = out["study_blood_ml"].astype(np.float32)
  return out


def shuffle_rows(path, seed=0):
  def edit(rows):
    body = rows[1:]
    rows[1:] = [body[i] for i in np.random.default_rng(seed).permutation(len(body))]
  rewrite_csv(path, edit)


def rewrite_csv(path, edit):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  edit(rows)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


def mask_preds():
  """Two series on a 64×64 grid: an intraparenchymal ellipsoid and a subdural slab, plus a blood-free one."""
  spacing_xy, gap = 0.8, 2.5
  z, yy, xx = np.meshgrid((np.arange(12) - 5.5) * gap, (np.arange(64) - 31.5) * spacing_xy,
                          (np.arange(64) - 31.5) * spacing_xy, indexing="ij")
  iph = ((z / 10) ** 2 + (yy / 14) ** 2 + (xx / 9) ** 2 <= 1).astype(np.uint8) * LABELS.index("intraparenchymal")
  sdh = np.zeros_like(iph)
  sdh[3:7, 5:40, 2:6] = LABELS.index("subdural")
  none = np.zeros_like(iph)
  masks = np.concatenate([iph, sdh, none])
  n = len(masks)
  series = np.repeat(["A", "B", "C"], 12)
  order = np.random.default_rng(0).permutation(n)  # rows in no particular order
  pred_mask = masks.copy()
  pred_mask[12:24] = 0  # the subdural slab is missed
  pred_mask[30, 10:12, 10:12] = 1  # a false positive in the blood-free series: not a slice with blood
  labels = np.zeros((n, 6), np.float32)
  labels[:, 0] = masks.reshape(n, -1).max(1) > 0
  for k in range(1, 6):
    labels[:, k] = (masks == k).reshape(n, -1).any(1)
  preds = {"study_id": np.char.add("st", series), "series_id": series,
           "slice_index": np.tile(np.arange(12), 3).astype(np.int32),
           "z_position": np.tile(np.arange(12) * gap + 100.0, 3).astype(np.float32),
           "slice_thickness": np.full(n, 5.0, np.float32),  # thicker than the gap: volumes use the gap
           "pixel_spacing": np.full((n, 2), spacing_xy, np.float32), "mask": masks, "pred_mask": pred_mask,
           "labels": labels, "probabilities": np.clip(labels * 0.8 + 0.1, 0, 1)}
  return {k: v[order] for k, v in preds.items()}, {"A": iph, "B": sdh}, (gap, spacing_xy, spacing_xy)
