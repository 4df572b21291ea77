"""`ich_jax.train.checkpoint`: a state and an input iterator's position saved and restored, the newest `keep`
kept, a chosen step restored, and an empty folder named (the loop's crash and resume: tests/train/test_loop.py)."""
import grain
import jax
import numpy as np
import pytest

from ich_jax.train import checkpoint, sharding


def _state(step: int) -> dict:
  """A small train-state-shaped tree whose values say which step wrote it."""
  return {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) + step, "b": np.full(3, -step, np.float32)},
          "step": np.int32(step)}


def _abstract(state: dict) -> dict:
  rep = sharding.replicated(sharding.data_mesh())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=rep), state)


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _assert_tree_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), w)


def test_state_and_iterator_position_round_trip(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=3)
  it = _iterator()
  assert [next(it) for _ in range(3)] == [0, 1, 2]
  ckpt.save(3, _state(3), it)
  assert [next(it) for _ in range(4)] == [3, 4, 5, 6]     # moved on after the save
  ckpt.close()

  again = checkpoint.Checkpointer(tmp_path / "ckpt", keep=3)
  fresh = _iterator()
  state, step = again.restore(_abstract(_state(0)), fresh)
  again.close()
  assert step == 3
  _assert_tree_equal(state, _state(3))
  # The restored iterator continues where the saved one stood, not where it ended up.
  assert [next(fresh) for _ in range(2)] == [3, 4]


def test_keeps_the_newest_and_restores_a_chosen_step(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  assert ckpt.latest_step is None and ckpt.all_steps == []
  for step in (1, 2, 5):
    ckpt.save(step, _state(step))
  assert ckpt.all_steps == [2, 5] and ckpt.latest_step == 5
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "5"]
  state, step = ckpt.restore(_abstract(_state(0)), step=2)
  assert step == 2
  _assert_tree_equal(state, _state(2))
  # The restored arrays take the abstract state's sharding: replicated over the mesh's 8 devices.
  assert len(state["params"]["w"].sharding.device_set) == 8 and state["params"]["w"].sharding.is_fully_replicated
  ckpt.close()


def test_restoring_from_an_empty_folder_names_it(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "none", keep=1)
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in .*{tmp_path.name}/none"):
    ckpt.restore(_abstract(_state(0)))
  ckpt.close()
