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


def test_forced_bin_studies_render_in_that_bin():
  # A forced-bin patient gets one bleed whose *rendered* volume is in the bin,
  # even where the first draw renders as nothing or as a larger bin.
  from data_builders.synthetic_ich import synthetic_ich as S
  config = S.SyntheticIchConfig(name="forced_test", phantom=(
      ("matrix", 256), ("pixel_spacing_mm", (0.8, 0.9)), ("slice_thickness_mm", (2.5, 5.0)), ("max_slices", 10)))
  from ich_jax import size_bin
  for seed in range(3):
    examples = S._study_examples((config, "P0", 0, seed, "punctate"))
    ml = float(examples[0][1]["study_blood_ml"])
    assert 0 < ml and size_bin(ml) == "punctate"
    assert any(e["labels"][0] == 1 for _, e in examples)


def test_forced_bins_cannot_exceed_the_split():
  from data_builders.synthetic_ich import synthetic_ich as S
  config = S.SyntheticIchConfig(name="forced_bad", patients=(("test", 1),), forced_bins=(("test", "small", 2),))
  with pytest.raises(ValueError, match="forced_bins asks 2 patients of split 'test'"):
    S.plan_studies(config)


def test_small_test_split_has_its_punctate_floor_and_more_test_patients_keep_train_fixed():
  from data_builders.synthetic_ich import synthetic_ich as S
  small = S.SyntheticIch.builder_configs["small"]
  plan = S.plan_studies(small)
  assert [t[4] for t in plan["test"][:2]] == ["punctate", "punctate"]
  assert all(t[4] is None for t in plan["train"])
  import dataclasses
  bigger = dataclasses.replace(small, patients=(*small.patients[:2], ("test", 130)))
  assert [t[1:4] for t in S.plan_studies(bigger)["train"]] == [t[1:4] for t in plan["train"]]


def test_the_development_set_shares_no_phantom_with_small():
  # small_dev selects quickstart variants; a phantom seed (hence a study) it shared with small's
  # train or test split would leak into that choice.
  from data_builders.synthetic_ich import synthetic_ich as S
  configs = S.SyntheticIch.builder_configs
  small = {t[3] for tasks in S.plan_studies(configs["small"]).values() for t in tasks}
  dev = S.plan_studies(configs["small_dev"])
  assert set(dev) == {"test"} and len({t[1] for t in dev["test"]}) == 300
  dev_seeds = {t[3] for t in dev["test"]}
  assert len(dev_seeds) == len(dev["test"]) and not dev_seeds & small
  assert [t[4] for t in dev["test"][:4]] == ["punctate"] * 4
  # small_dev256 is the same development patients at 256 px (small256's development set):
  # the same phantom seeds and forced bins, so a resolution comparison sees the same studies.
  dev256 = S.plan_studies(configs["small_dev256"])
  assert [t[1:] for t in dev256["test"]] == [t[1:] for t in dev["test"]]
  assert configs["small_dev256"].resolution == 256 and configs["small_dev256"].phantom == configs["small_dev"].phantom
