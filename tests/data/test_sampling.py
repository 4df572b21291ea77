"""Epoch sampling: small-bleed repeats (seed 000 Model 5) and balanced lesion/normal epochs (seed 000 §2.1)."""

import collections
import json

import numpy as np
import pytest

from ich_jax.data import pipeline, sampling
from tests.data.slice_fakes import assert_batches_equal, data_cfg, fake_source, record_stream, take


def test_small_bleed_slices_repeat_within_each_epoch():
  # fake_source: series k has study_blood_ml = k, so with small_bleed_ml 3.0 the
  # slices with blood of series 1, 2, 3 (not 0: no blood volume) are the small ones.
  src = fake_source()
  cfg = data_cfg(augment=False, small_bleed_repeat=3, small_bleed_ml=3.0)
  small = {i for i, r in enumerate(src)
           if r["labels"][0] > 0.5 and 0 < float(r["study_blood_ml"]) <= 3.0}
  assert small  # the fixture has some
  n = len(src) + 2 * len(small)
  stream = record_stream(pipeline.train_iterator(src, cfg, global_batch_size=n, seed=0), 2)
  for epoch in (stream[:n], stream[n:]):
    counts = collections.Counter(epoch.tolist())
    assert {i for i, c in counts.items() if c == 3} == small
    assert all(counts[i] == 1 for i in range(len(src)) if i not in small)
  assert not np.array_equal(stream[:n], stream[n:])


def test_small_bleed_repeat_needs_volumes():
  src = [{k: v for k, v in r.items() if k != "study_blood_ml"} for r in fake_source()]
  with pytest.raises(ValueError, match="study_blood_ml"):
    pipeline.train_iterator(src, data_cfg(small_bleed_repeat=2), global_batch_size=4, seed=0)


def _labelled_source(n_normal=20, subtypes=(1, 1, 1, 2, 3, 5, 5, 5, 5, 5, 5, 5), other=()):
  """Slices with a known label each: n_normal without blood, one per entry of `subtypes`."""
  records = []
  for k, sub in enumerate((0,) * n_normal + tuple(subtypes) + tuple(other)):
    labels = np.zeros(6, np.float32)
    if sub:
      labels[0] = labels[sub] = 1.0
    records.append({"image": np.zeros((16, 16), np.int16), "labels": labels,
                    "mask": np.full((16, 16), sub, np.uint8), "study_id": f"s{k}".encode(),
                    "series_id": f"1.{k}".encode(), "slice_index": np.int32(0), "z_position": np.float32(0),
                    "pixel_spacing": np.array([0.5, 0.5], np.float32), "slice_thickness": np.float32(5),
                    "study_blood_ml": np.float32(0.0 if not sub else (2.0 if sub == 5 else 30.0)),
                    "mimic": np.uint8(0)})
  return records


def test_balanced_sampling_equal_normal_and_lesion_slices_balanced_subtypes():
  # Seed 000 §2.1: as many slices without blood as with; subtypes balanced among them.
  src = _labelled_source()
  cfg = data_cfg(augment=False)
  cfg.sampling.mode = "balanced"
  cfg.sampling.num_lesion = 8
  sampler = sampling.epoch_sampler(src, cfg, seed=0)
  assert sampler.length == 16
  epoch = sampler.records(0)
  labels = np.stack([src[i]["labels"] for i in epoch])
  assert (labels[:, 0] > 0.5).sum() == 8
  # Four subtypes present (1, 2, 3, 5): two lesion slots each, whatever their frequency.
  assert collections.Counter(int(np.flatnonzero(labels[i, 1:])[0]) + 1 for i in range(8)) == {1: 2, 2: 2, 3: 2, 5: 2}
  # Drawn once (the paper's fixed set) unless asked to redraw; seeds differ.
  assert np.array_equal(sampler.records(3), epoch)
  cfg.sampling.redraw_each_epoch = True
  redrawn = sampling.epoch_sampler(src, cfg, seed=0)
  assert not np.array_equal(redrawn.records(1), redrawn.records(0))
  assert not np.array_equal(sampling.epoch_sampler(src, cfg, seed=1).records(0), redrawn.records(0))


def test_balanced_subsets_leave_other_blood_out():
  # Seed 000 Models 3 and 5: SDH-only and small-lesion models see those lesions and normal slices.
  src = _labelled_source()
  cfg = data_cfg(augment=False)
  cfg.sampling.mode = "balanced"
  cfg.sampling.lesion = "subdural"
  epoch = sampling.epoch_sampler(src, cfg, seed=0).records(0)
  labels = np.stack([src[i]["labels"] for i in epoch])
  assert len(epoch) == 14 and (labels[:7, 5] == 1).all() and (labels[7:, 0] == 0).all()
  assert len(set(epoch[:7].tolist())) == 7   # all seven SDH slices, no repeats
  cfg.sampling.lesion = "small"          # study_blood_ml 2 mL: the SDH slices again, via volume
  small = sampling.epoch_sampler(src, cfg, seed=0).records(0)
  assert set(small[:7].tolist()) == set(epoch[:7].tolist())
  cfg.sampling.lesion = "ventricle"
  with pytest.raises(ValueError, match="sampling.lesion='ventricle'"):
    sampling.epoch_sampler(src, cfg, seed=0)
  cfg.sampling.lesion = "epidural"
  cfg.sampling.mode = "balanced"
  src_no_edh = _labelled_source(subtypes=(2, 3))
  with pytest.raises(ValueError, match="no training slice is a lesion slice"):
    sampling.epoch_sampler(src_no_edh, cfg, seed=0)
  # A dataset without volumes (no masks) cannot pick small lesions: the record and field are named.
  no_volume = [{k: v for k, v in r.items() if k != "study_blood_ml"} for r in src]
  cfg.sampling.lesion = "small"
  with pytest.raises(ValueError, match=r"sampling.lesion='small' needs the field study_blood_ml, which record 0 "
                                       r"of this dataset lacks \(datasets without masks"):
    sampling.epoch_sampler(no_volume, cfg, seed=0)


def test_balanced_stream_is_resumable_and_in_the_sampled_records():
  src = _labelled_source()
  cfg = data_cfg(augment=False)
  cfg.sampling.mode = "balanced"
  cfg.sampling.redraw_each_epoch = True
  n = sampling.epoch_sampler(src, cfg, seed=3).length
  stream = record_stream(pipeline.train_iterator(src, cfg, global_batch_size=n, seed=3), 2)
  sampler = sampling.epoch_sampler(src, cfg, seed=3)
  for e in range(2):
    assert collections.Counter(stream[e * n:(e + 1) * n].tolist()) == collections.Counter(sampler.records(e).tolist())
  it = pipeline.train_iterator(src, cfg, global_batch_size=4, seed=3)
  reference = take(pipeline.train_iterator(src, cfg, global_batch_size=4, seed=3), 12)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  fresh = pipeline.train_iterator(src, cfg, global_batch_size=4, seed=3)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 7), reference[5:])
