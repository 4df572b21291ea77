"""Checkpointing: the project's only Orbax import.

A checkpoint holds the train state (params, model state such as BatchNorm
statistics, optimizer state, step) and each process's input-iterator state, so
a resumed run sees exactly the batches an uninterrupted run would have seen.
Orbax writes each step into a temporary folder and renames it when complete, so
a run killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves when told to (the loop decides when), keeps the newest `keep` (None: all, until `delete`)."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int | None, async_save: bool = False):
    directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  @property
  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None) -> None:
    """Saves `state` (and each process's iterator position) as `step`, atomically."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if not self._manager.save(step, args=ocp.args.Composite(**items), force=True):
      raise RuntimeError(f"Orbax declined to save step {step} in {self._manager.directory}")

  def restore(self, abstract_state: Any, data_iterator=None, step: int | None = None) -> tuple[Any, int]:
    """Restores `step` (default: latest) into the structure/sharding of `abstract_state`.

    `data_iterator`, when given, is set to its saved position in place.
    """
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self._manager.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], step

  def delete(self, step: int) -> None:
    """Removes the checkpoint of `step` (the best-checkpoint tracker prunes its own: ich_jax.train.evaluate)."""
    self._manager.delete(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

