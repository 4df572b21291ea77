"""Scan-balanced epochs (seed 000 §2.2.1: "an equal number of brain CT scans with and without ICH"):
`sampling.balanced_scan_records` and `data.sampling.mode = "balanced_scans"`."""
import collections

import numpy as np
import pytest

from ich_jax.data import sampling
from tests.data.slice_fakes import data_cfg


def _scans(spec):
  """Records of scans given as {study: [slice labels as (any, subtype index or 0)], ...}, shuffled; volumes per
  study from `spec` order (study k: k + 1 mL)."""
  records = []
  for k, (study, slices) in enumerate(spec.items()):
    for s, sub in enumerate(slices):
      labels = np.zeros(6, np.float32)
      if sub:
        labels[0] = labels[sub] = 1.0
      records.append({"labels": labels, "study_id": study.encode(), "series_id": study.encode(),
                      "slice_index": np.int32(s), "study_blood_ml": np.float32(k + 1)})
  order = np.random.default_rng(0).permutation(len(records))
  return [records[i] for i in order]


SPEC = {"sdh_a": [0, 5, 5], "sdh_b": [5, 0], "sah": [0, 4, 0, 0], "ipe": [2, 2],
        "n1": [0, 0, 0], "n2": [0, 0], "n3": [0, 0, 0, 0, 0], "n4": [0]}


def test_balanced_scans_draw_whole_scans_lesion_and_normal_equally():
  src = _scans(SPEC)
  study = np.array([r["study_id"].decode() for r in src])
  size = collections.Counter(study)
  cfg = data_cfg(augment=False, sampling={"mode": "balanced_scans", "lesion": "subdural", "balance_subtypes": False,
                                          "num_lesion": 0, "redraw_each_epoch": False})
  sampler = sampling.epoch_sampler(src, cfg, seed=3)
  drawn = sampler.records(0)
  got = collections.Counter(study[drawn])
  # Both subdural scans, whole; two of the four blood-free scans, whole; never the other bleeds.
  assert {s for s in got if s.startswith("sdh")} == {"sdh_a", "sdh_b"}
  normal = [s for s in got if s.startswith("n")]
  assert len(normal) == 2 and all(got[s] == size[s] for s in got)
  assert not {"sah", "ipe"} & set(got) and len(drawn) == len(set(drawn.tolist())) == sampler.length
  # One draw, every epoch; another seed draws other normal scans at some point.
  assert np.array_equal(sampler.records(5), drawn)
  others = {frozenset(s for s in study[sampling.epoch_sampler(src, cfg, seed=k).records(0)] if s.startswith("n"))
            for k in range(8)}
  assert len(others) > 1
  # Small lesions: studies of at most small_bleed_ml (volumes 1, 2, 3, 4 mL for the four bleeds here).
  small = data_cfg(augment=False, small_bleed_ml=2.5, sampling={"mode": "balanced_scans", "lesion": "small"})
  got = collections.Counter(study[sampling.epoch_sampler(src, small, seed=0).records(0)])
  assert {s for s in got if not s.startswith("n")} == {"sdh_a", "sdh_b"} and len(got) == 4


def test_more_lesion_scans_than_normal_ones_repeat_normal_scans():
  rng = np.random.default_rng(0)
  scan = np.array([0, 0, 1, 2, 2, 3])
  lesion = np.array([1, 0, 1, 1, 0, 0], bool)
  normal = np.array([0, 1, 0, 0, 1, 1], bool)
  got = sampling.balanced_scan_records(scan, lesion, normal, 3, rng)
  assert sorted(got.tolist()) == [0, 1, 2, 3, 4, 5, 5, 5]
  with pytest.raises(ValueError, match="needs lesion and normal scans; the split has 3 lesion and 0 normal"):
    sampling.balanced_scan_records(scan, lesion, np.zeros(6, bool), 3, rng)


def test_redrawing_scans_each_epoch_is_refused():
  cfg = data_cfg(augment=False, sampling={"mode": "balanced_scans", "redraw_each_epoch": True})
  with pytest.raises(ValueError, match="redraw_each_epoch=True with mode='balanced_scans'"):
    sampling.epoch_sampler(_scans(SPEC), cfg, seed=0)
