"""`synthetic_ich/tiny` as built by TFDS (ArrayRecord) and read back without TensorFlow."""
import collections
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from ich_jax.data import datasets


@pytest.fixture(scope="module")
def splits(tiny_data_dir):
  cfg = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": tiny_data_dir})
  return {s: datasets.open_split(cfg, s) for s in ("train", "validation", "test")}


def _records(src):
  return [src[i] for i in range(len(src))]


def test_no_tensorflow_and_schema(splits):
  assert "tensorflow" not in sys.modules
  rec = splits["train"][0]
  assert rec["image"].dtype == np.int16 and rec["image"].shape == (64, 64)
  assert rec["mask"].dtype == np.uint8 and rec["labels"].shape == (6,)
  assert set(rec) >= {"study_id", "series_id", "slice_index", "z_position", "pixel_spacing", "slice_thickness",
                      "patient_id", "study_blood_ml", "mimic"}


def test_patients_never_straddle_splits(splits):
  patients = {s: {r["patient_id"] for r in _records(src)} for s, src in splits.items()}
  assert patients["train"] and patients["validation"] and patients["test"]
  assert not patients["train"] & patients["test"]
  assert not patients["train"] & patients["validation"]
  assert not patients["validation"] & patients["test"]
  studies = collections.defaultdict(set)
  for src in splits.values():
    for r in _records(src):
      studies[r["patient_id"]].add(r["study_id"])
  assert any(len(s) == 2 for s in studies.values())  # follow-up studies exist and stay with their patient


def test_labels_masks_and_order_agree(splits):
  by_series = collections.defaultdict(list)
  for r in _records(splits["train"]) + _records(splits["test"]):
    labels, mask = r["labels"], r["mask"]
    assert labels[0] == float(mask.any()) == float(labels[1:].max())
    # A subtype present in the mask is labelled (overlaps may hide one, never invent one).
    for sub in np.unique(mask[mask > 0]):
      assert labels[sub] == 1.0
    assert (r["study_blood_ml"] > 0) or not labels[0]
    assert -1100 <= r["image"].min() < -900  # air around the head, in HU
    by_series[r["series_id"]].append((int(r["slice_index"]), float(r["z_position"]), float(r["slice_thickness"]),
                                      int(r["image"].max())))
  for series, rows in by_series.items():
    rows.sort()
    idx, z, thick, top = map(np.array, zip(*rows))
    # Bone, in HU: at tiny's ~3.6 mm pixels the thin skull is partial-volumed well below cortical density.
    assert top.max() > 300
    assert list(idx) == list(range(len(idx)))
    gaps = np.diff(z)
    assert np.all(gaps > 0), series
    np.testing.assert_allclose(gaps, thick[0], rtol=1e-4)  # tiny uses 5 mm slices, gap == thickness
  assert any(r["labels"][0] for r in _records(splits["test"]))
  assert any(not r["labels"][0] for r in _records(splits["test"]))
