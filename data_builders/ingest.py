"""The base of the real-dataset builders (`rsna_ich`, `physionet_ct_ich`, `cq500`) and its configs.

`IngestBuilder` is a ShardBasedBuilder (GeneratorBasedBuilder's shuffler needs
TensorFlow past 1 GB) writing several shards per split, with one "spawn"
process pool for the whole build, a progress bar per split and a build report
(`data_builders.build_report`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import math
import multiprocessing
import os
import pathlib
import traceback
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_builders.build_report import REPORT_FILE, BuildReport, Result


def worker_count() -> int:
  return max(1, int(os.environ.get("ICH_JAX_BUILD_WORKERS", os.cpu_count() or 1)))


def ordered_map(pool, fn: Callable, tasks: Iterable, lookahead: int):
  """`pool.map` in order, with at most `lookahead` tasks in flight (big results do not pile up)."""
  it = iter(tasks)
  pending = collections.deque(pool.submit(fn, t) for t in itertools.islice(it, lookahead))
  while pending:
    future = pending.popleft()
    nxt = next(it, _END)
    if nxt is not _END:
      pending.append(pool.submit(fn, nxt))
    yield future.result()


_END = object()


def guarded(fn: Callable, where: Callable[[object], str], task) -> Result:
  """Runs one task; an unexpected error becomes a skipped item naming the task, not a crashed build."""
  try:
    return fn(task)
  except Exception as e:  # noqa: BLE001 - decoders and readers raise anything; the report names it
    tb = traceback.extract_tb(e.__traceback__)[-1]
    return Result(skipped=[(where(task), f"{type(e).__name__}: {e} (at {pathlib.Path(tb.filename).name}:{tb.lineno})")])


def partition(weights: Sequence[float], max_weight: float, min_parts: int) -> list[list[int]]:
  """Contiguous groups of task indices: about equal weight, each <= max_weight where possible, >= min_parts."""
  n = len(weights)
  if n == 0:
    return []
  total = float(sum(weights))
  parts = min(n, max(min_parts, math.ceil(total / max_weight) if max_weight > 0 else 1, 1))
  starts = np.concatenate([[0.0], np.cumsum(weights)[:-1]])
  part = np.minimum(parts - 1, np.floor(starts / max(total, 1e-12) * parts)).astype(int)
  groups: dict[int, list[int]] = {}
  for i, p in enumerate(part):
    groups.setdefault(int(p), []).append(i)
  return [groups[p] for p in sorted(groups)]


class SplitProgress:
  """A progress bar over one split's tasks (studies or series), as training shows one over steps.

  A build of a few hundred studies takes minutes with nothing else to show.
  TFDS asks for every split's shards before it writes any, so the bar opens
  with the split's first task, not when the split is planned, and closes
  with its last.
  """

  def __init__(self, desc: str, total: int, unit: str = "study"):
    self.desc, self.total, self.unit = desc, total, unit
    self._bar = None

  def start(self) -> None:
    if self._bar is None and self.total > 0:
      from tqdm import tqdm
      self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, dynamic_ncols=True, mininterval=2.0)

  def update(self, n: int = 1) -> None:
    self.start()
    self._bar.update(n)
    if self._bar.n >= self.total:
      self._bar.close()


class IngestBuilder(tfds.core.ShardBasedBuilder):
  """Base of the real-dataset builders: a process pool, shards by weight, a build report.

  Subclasses implement `_info` and `_plan(manual_dir)`, returning per split a
  list of (task, weight) plus the worker function; `_postprocess(split, result)`
  may edit a task's examples in the parent (e.g. join boxes) before they are
  written.
  """

  # Written in the version folder, next to dataset_info.json.
  report: BuildReport | None = None
  # What one task is, for the progress bar ("study", "series").
  TASK_UNIT = "study"

  def _download_and_prepare(self, dl_manager, download_config=None):
    self.report = BuildReport(f"{self.name}/{self.builder_config.name}")
    workers = worker_count()
    pool = None
    if workers > 1:
      # "spawn": the parent may have started JAX or TF threads, which fork would copy.
      pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    self._pool, self._workers = pool, workers
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      self._pool = None
      if pool is not None:
        pool.shutdown(cancel_futures=True)
    self._finish_report()
    for split, info in self.info.splits.items():
      if info.num_examples == 0:
        self.report.note(split, f"split {split} has no examples: every item in it was skipped; do not read it")
    # self.data_path is the temporary folder TFDS renames once the build succeeds.
    self.report.write(self.data_path / REPORT_FILE)
    print(self.report.summary(), flush=True)

  def _map(self, fn: Callable, tasks: Sequence):
    pool = getattr(self, "_pool", None)
    if pool is None:
      return map(fn, tasks)
    return ordered_map(pool, fn, tasks, lookahead=2 * self._workers)

  def _shards(self, split: str, fn: Callable, tasks: Sequence, weights: Sequence[float]):
    """One generator per shard: contiguous task groups of about `config.shard_mb` each."""
    cfg = self.builder_config
    groups = partition(weights, cfg.shard_mb * 2**20, cfg.min_shards)
    progress = SplitProgress(f"{self.name}/{cfg.name} {split}", len(tasks), self.TASK_UNIT)
    return [functools.partial(self._run_shard, split, fn, [tasks[i] for i in g], progress) for g in groups]

  def _run_shard(self, split: str, fn: Callable, tasks: Sequence, progress: SplitProgress):
    progress.start()
    for result in self._map(fn, tasks):
      self._postprocess(split, result)
      self.report.add(result)
      self.report.count(split, "examples", len(result.examples))
      progress.update()
      yield from result.examples

  def _postprocess(self, split: str, result: Result) -> None:
    del split, result

  def _finish_report(self) -> None:
    """Adds builder-specific sections once every shard is written."""


@dataclasses.dataclass
class IngestConfig(tfds.core.BuilderConfig):
  """What every real-dataset config has."""
  level: str = "slice"        # "slice": one example per slice; "scan": one per series (the sequence models)
  resolution: int = 512       # stored in-plane size; resized once, here
  shard_mb: int = 1024        # about this much image data per shard
  min_shards: int = 4         # several shards per split even when small (parallel readers)

  def __post_init__(self):
    if self.level not in ("slice", "scan"):
      raise ValueError(f"{self.name}: level must be 'slice' or 'scan', got {self.level!r}")


def standard_configs(config_cls, unit: str) -> list:
  """The four configs every real dataset has: slices / scans (one example per `unit`), native 512 and 256."""
  return [config_cls(name=f"{level}s{suffix}", level=level, resolution=r,
                     description=f"One example per {'slice' if level == 'slice' else unit}, {r}×{r}.")
          for level in ("slice", "scan") for r, suffix in ((512, ""), (256, "256"))]


# --- For `_shard_iterators_per_split`: the manual_dir layout and the splits ------------------


def require_file(root: pathlib.Path, names: Sequence[str], what: str, *, required: bool = True):
  """The first of `names` under `root` (case-insensitive), or an error naming what was looked for."""
  lower = {p.name.lower(): p for p in root.iterdir()}
  for name in names:
    if name.lower() in lower:
      return lower[name.lower()]
  if required:
    raise FileNotFoundError(f"{root}: no {what} (looked for {', '.join(names)}); "
                            f"found {', '.join(sorted(p.name for p in root.iterdir())[:20])}")
  return None


def stable_order(keys: Iterable[str], salt: str) -> list[str]:
  """Keys in a pseudo-random order fixed by their names (sha256), for splits that do not depend on file order."""
  return sorted(set(keys), key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())
