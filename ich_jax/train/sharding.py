"""Data-parallel sharding over all devices of all processes, declared with a mesh.

Params and optimizer state are replicated; batches are split along their
leading axis over the mesh's "data" axis. `jax.jit` with these NamedShardings is
what pjit became; no pmap.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int) -> None:
  """The global batch must split evenly over processes and devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(
        f"config train.batch_size={global_batch_size} is not divisible by the "
        f"{jax.device_count()} devices of the mesh")


def put_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding, keys) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's local rows of `keys`."""
  missing = [k for k in keys if k not in local_batch]
  if missing:
    raise KeyError(f"batch lacks field(s) {missing}; it has {sorted(local_batch)}")
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[k])) for k in keys}


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order."""
  if jax.process_count() == 1:
    return np.asarray(array)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas along other mesh axes hold the same rows
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


# Text fields cross processes as fixed-width bytes (collectives move numbers only).
_TEXT_WIDTH = 256


def gather_hosts(tree: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates each process's rows (process order) so every process holds all of them."""
  if jax.process_count() == 1:
    return dict(tree)
  from jax.experimental import multihost_utils

  out = {}
  for key, value in tree.items():
    value = np.asarray(value)
    if value.dtype.kind in "SUO":
      encoded = [str(v.decode() if isinstance(v, bytes) else v).encode() for v in value.ravel()]
      too_long = [e for e in encoded if len(e) > _TEXT_WIDTH]
      if too_long:
        raise ValueError(f"field {key!r}: value {too_long[0][:60]!r}… longer than {_TEXT_WIDTH} bytes")
      codes = np.zeros((len(encoded), _TEXT_WIDTH), np.uint8)
      for i, e in enumerate(encoded):
        codes[i, :len(e)] = np.frombuffer(e, np.uint8)
      gathered = np.asarray(multihost_utils.process_allgather(codes, tiled=True))
      out[key] = np.array([bytes(row).rstrip(b"\0") for row in gathered], dtype=object)
    else:
      out[key] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return out


def sync(name: str) -> None:
  """Barrier across processes (no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
