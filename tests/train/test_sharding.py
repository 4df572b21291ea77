"""`ich_jax.train.sharding` on the session's 8 virtual CPU devices (tests/conftest.py): the mesh, the batch-size
check, batches placed row-split and read back (a real step on them: tests/train/test_loop.py; several processes:
tests/train/test_multihost.py)."""
import jax
import numpy as np
import pytest

from ich_jax.train import sharding


def test_the_mesh_spans_every_device_on_one_data_axis():
  mesh = sharding.data_mesh()
  assert dict(mesh.shape) == {"data": 8} and jax.device_count() == 8
  assert sharding.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
  assert sharding.replicated(mesh).spec == jax.sharding.PartitionSpec()


def test_batch_size_must_split_over_the_devices():
  for ok in (8, 16, 256):
    sharding.check_batch_size(ok)
  with pytest.raises(ValueError, match=r"config train.batch_size=12 is not divisible by the 8 devices of the mesh"):
    sharding.check_batch_size(12)


def test_put_batch_splits_rows_over_devices_and_local_rows_reads_them_back():
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((16, 4, 4, 3), np.float32), "labels": np.arange(16 * 6, dtype=np.float32).reshape(16, 6),
           "study_id": np.array([f"s{i}" for i in range(16)])}
  placed = sharding.put_batch(batch, sharding.batch_sharding(sharding.data_mesh()), ("image", "labels"))
  assert sorted(placed) == ["image", "labels"]              # only the keys asked for
  labels = placed["labels"]
  assert labels.shape == (16, 6) and len(labels.sharding.device_set) == 8
  # Each device holds two consecutive rows, in device order.
  for shard in labels.addressable_shards:
    start = shard.index[0].start
    assert shard.data.shape == (2, 6)
    np.testing.assert_array_equal(np.asarray(shard.data), batch["labels"][start:start + 2])
  for key in placed:
    np.testing.assert_array_equal(sharding.local_rows(placed[key]), batch[key])


def test_put_batch_names_missing_fields():
  with pytest.raises(KeyError, match=r"batch lacks field\(s\) \['mask'\]; it has \['image', 'labels'\]"):
    sharding.put_batch({"labels": np.zeros((8, 6)), "image": np.zeros((8, 2))},
                       sharding.batch_sharding(sharding.data_mesh()), ("image", "mask"))


def test_one_process_gathers_its_own_rows_and_syncs_with_itself():
  tree = {"prob": np.arange(5.0), "study_id": np.array([b"a", b"b", b"c", b"d", b"e"], dtype=object)}
  gathered = sharding.gather_hosts(tree)
  assert gathered is not tree and gathered.keys() == tree.keys()
  assert all(gathered[k] is tree[k] for k in tree)           # no copies, no text round trip
  sharding.sync("test")                                       # a no-op on one process
