"""The shared training order (seeded, sharded by process, resumable) and evaluation pass."""

import collections
import json

import numpy as np
import pytest

from ich_jax.data import augment, pipeline, streams, windows
from tests.data.slice_fakes import assert_batches_equal, data_cfg, fake_source, record_stream, take


def test_same_seed_same_batches_different_seed_different():
  src = fake_source()
  a = take(pipeline.train_iterator(src, data_cfg(), global_batch_size=4, seed=3), 5)
  b = take(pipeline.train_iterator(src, data_cfg(), global_batch_size=4, seed=3), 5)
  assert_batches_equal(a, b)
  c = take(pipeline.train_iterator(src, data_cfg(), global_batch_size=4, seed=4), 5)
  assert not all(np.array_equal(x["record_index"], y["record_index"]) for x, y in zip(a, c))


def test_each_epoch_is_a_new_permutation():
  src = fake_source()
  n = len(src)  # 37: epochs do not align with batches of 8
  stream = record_stream(pipeline.train_iterator(src, data_cfg(augment=False), global_batch_size=8, seed=0),
                         -(-3 * n // 8))
  epochs = [stream[e * n:(e + 1) * n] for e in range(3)]
  for e in epochs:
    assert sorted(e.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(n))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_cover_the_global_batch(process_count):
  src = fake_source()
  cfg = data_cfg()
  steps = 6
  whole = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=1), steps)
  parts = [take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=1, process_index=p,
                                        process_count=process_count), steps) for p in range(process_count)]
  for k in range(steps):
    ids = [p[k]["record_index"] for p in parts]
    assert all(len(x) == 8 // process_count for x in ids)
    assert len(set(np.concatenate(ids).tolist())) == 8  # disjoint within a step
    assert sorted(np.concatenate(ids).tolist()) == sorted(whole[k]["record_index"].tolist())
    # Augmentation is keyed by stream position, so the same example looks the same.
    for p in parts:
      for row, r in enumerate(p[k]["record_index"]):
        (j,) = np.flatnonzero(whole[k]["record_index"] == r)
        np.testing.assert_array_equal(p[k]["image"][row], whole[k]["image"][j])


def test_indivisible_global_batch_is_rejected():
  with pytest.raises(ValueError, match="divisible"):
    pipeline.train_iterator(fake_source(), data_cfg(), global_batch_size=6, seed=0, process_count=4)


@pytest.mark.parametrize("recipe,on_device", [(windows.RSNA_3WINDOW, False), (windows.RSNA_NEIGHBOURS, False),
                                               (windows.RSNA_NEIGHBOURS, True)])
def test_resume_from_json_state_is_exact(recipe, on_device):
  src = fake_source()
  cfg = data_cfg(recipe=recipe, augment=True, preprocess_on="device" if on_device else "host")
  cfg.augment.rotation_deg = 30.0
  k, m = 3, 6  # crosses an epoch boundary (37 records, batches of 8)
  reference = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=5), k + m)
  it = pipeline.train_iterator(src, cfg, global_batch_size=8, seed=5)
  take(it, k)
  state = json.loads(json.dumps(it.get_state()))
  fresh = pipeline.train_iterator(src, cfg, global_batch_size=8, seed=5)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, m), reference[k:])
  # The augmentation really was on (images, or on-device maps, differ from the unaugmented pipeline).
  if on_device:
    assert not np.array_equal(reference[0]["warp"][0], augment.source_terms(None, (16, 16)))
  else:
    plain = take(pipeline.train_iterator(src, data_cfg(recipe=recipe, augment=False), global_batch_size=8, seed=5), 1)
    assert not np.array_equal(plain[0]["image"], reference[0]["image"])


@pytest.mark.parametrize("process_count,batch_size", [(1, 8), (3, 8), (4, 5), (50, 2)])
def test_eval_batches_cover_every_record_once(process_count, batch_size):
  src = fake_source()
  n = len(src)
  cfg = data_cfg(augment=True)  # eval ignores augmentation
  counts = collections.Counter()
  n_batches = set()
  for p in range(process_count):
    batches = list(pipeline.eval_batches(src, cfg, batch_size=batch_size, process_index=p,
                                         process_count=process_count))
    n_batches.add(len(batches))
    valid_ids = []
    for b in batches:
      assert b["image"].shape[0] == batch_size and b["valid"].dtype == np.bool_
      # Padding only at the end of the pass.
      valid_ids += b["record_index"][b["valid"]].tolist()
    flags = np.concatenate([b["valid"] for b in batches])
    assert not np.any(np.diff(flags.astype(int)) > 0)
    assert valid_ids == sorted(valid_ids)  # record order
    counts.update(valid_ids)
  assert n_batches == {streams.eval_num_batches(n, batch_size, process_count)}
  assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}


def test_multiprocess_workers_match_and_resume():
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; launch.py parses them
  src = fake_source()
  cfg = data_cfg()
  reference = take(pipeline.train_iterator(src, cfg, global_batch_size=4, seed=2), 7)
  cfg.num_workers = 2
  it = pipeline.train_iterator(src, cfg, global_batch_size=4, seed=2)
  assert_batches_equal(take(it, 3), reference[:3])
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  fresh = pipeline.train_iterator(src, cfg, global_batch_size=4, seed=2)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), reference[3:])
  fresh.close()
