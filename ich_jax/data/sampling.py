"""Which training slices make up each epoch (`config.data.sampling`, `small_bleed_repeat`): `EpochSampler`.

Plain epochs are every record once; the sampler repeats small-bleed slices
(seed 000 §2.2.1, Model 5), draws a balanced set of lesion and normal slices
(seed 000 §2.1: "the same number of slices with and without hemorrhage"), or
a balanced set of scans, every slice of each (seed 000 §2.2.1: "an equal
number of brain CT scans with and without ICH", and for the SDH, SAH and
small-lesion models "the number of normal and lesion cases equally"). Grain
then shuffles the sampler's slots (`ich_jax.data.streams.train_batches`).
"""
from __future__ import annotations

import functools

import grain
import numpy as np

from ich_jax import LABELS
from ich_jax.data import config_defaults, datasets, series_index

SAMPLING_MODES = ("all", "balanced", "balanced_scans")


class EpochSampler:
  """Which records make up each training epoch: `length` slots; `record(epoch, slot)`.

  Epoch e's records are `draw(e)`, a pure function of (config, seed, e), so a
  resumed iterator sees the same epochs. Grain shuffles the slots within each
  epoch; the stream position p is slot p % length of epoch p // length.
  """

  def __init__(self, length: int, draw):
    self.length = int(length)
    self._draw = draw
    self._cache: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {"length": self.length, "_draw": self._draw, "_cache": {}}

  def records(self, epoch: int) -> np.ndarray:
    got = self._cache.get(epoch)
    if got is None:
      got = np.asarray(self._draw(epoch), np.int64)
      if len(got) != self.length:
        raise AssertionError(f"epoch {epoch} drew {len(got)} records, expected {self.length}")
      # Grain threads read the sampler concurrently; keep the last few epochs.
      self._cache = {**{k: v for k, v in self._cache.items() if k >= epoch - 1}, epoch: got}
    return got

  def record(self, position: int, slot: int) -> int:
    return int(self.records(int(position) // self.length)[int(slot)])


def _draw_fixed(records: np.ndarray, epoch: int) -> np.ndarray:
  return records


def _take(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
  """n of `pool`: without replacement while it lasts, then with (oversampling a rare class)."""
  if n <= len(pool):
    return rng.choice(pool, n, replace=False)
  return np.concatenate([rng.permutation(pool), rng.choice(pool, n - len(pool), replace=True)])


def balanced_records(labels: np.ndarray, lesion: np.ndarray, num_lesion: int, rng: np.random.Generator, *,
                     balance_subtypes: bool) -> np.ndarray:
  """Record indices of one balanced epoch: `num_lesion` lesion slices, then as many normal ones.

  labels: [N, 6] (any first); lesion: [N] bool, the slices that count as
  lesion. Normal slices have no blood (labels[:, 0] == 0); blood slices that
  are not lesion slices are never drawn. With `balance_subtypes`, every
  subtype present among the lesion slices gets num_lesion // K of the lesion
  slots (the first num_lesion % K subtypes one more): a slice with two
  subtypes can be drawn for each.
  """
  lesion_ids = np.flatnonzero(lesion)
  normal_ids = np.flatnonzero(labels[:, 0] < 0.5)
  if not len(lesion_ids) or not len(normal_ids):
    raise ValueError(f"balanced sampling needs lesion and normal slices; the split has {len(lesion_ids)} lesion "
                     f"and {len(normal_ids)} normal ones")
  if balance_subtypes:
    pools = [lesion_ids[labels[lesion_ids, k] > 0.5] for k in range(1, labels.shape[1])]
    pools = [pool for pool in pools if len(pool)]
    counts = [num_lesion // len(pools) + (i < num_lesion % len(pools)) for i in range(len(pools))]
    chosen = np.concatenate([_take(rng, pool, n) for pool, n in zip(pools, counts)])
  else:
    chosen = _take(rng, lesion_ids, num_lesion)
  return np.concatenate([chosen, _take(rng, normal_ids, num_lesion)]).astype(np.int64)


def balanced_scan_records(scan: np.ndarray, lesion: np.ndarray, normal: np.ndarray, num_lesion: int,
                          rng: np.random.Generator) -> np.ndarray:
  """Record indices of `num_lesion` lesion scans and as many normal scans, every slice of each, scan by scan.

  scan: [N] the scan of each record (any ids); lesion, normal: [N] bool, per
  record: a scan is a lesion scan if one of its records is a lesion slice, a
  normal scan if none of its records shows blood (`normal` all true). Scans
  with blood but no lesion slice are never drawn. Scans are drawn as
  `balanced_records` draws slices (without replacement while they last).
  """
  ids, scan_of = np.unique(np.asarray(scan), return_inverse=True)
  scan_of = scan_of.reshape(-1)
  lesion_scans = np.flatnonzero(np.bincount(scan_of, weights=np.asarray(lesion, np.float64), minlength=len(ids)) > 0)
  abnormal = np.bincount(scan_of, weights=(~np.asarray(normal, bool)).astype(np.float64), minlength=len(ids))
  normal_scans = np.flatnonzero(abnormal == 0)
  if not len(lesion_scans) or not len(normal_scans):
    raise ValueError(f"scan-balanced sampling needs lesion and normal scans; the split has {len(lesion_scans)} "
                     f"lesion and {len(normal_scans)} normal ones")
  chosen = np.concatenate([_take(rng, lesion_scans, num_lesion), _take(rng, normal_scans, num_lesion)])
  order = np.argsort(scan_of, kind="stable")
  starts = np.searchsorted(scan_of[order], np.arange(len(ids) + 1))
  return np.concatenate([order[starts[k]:starts[k + 1]] for k in chosen]).astype(np.int64)


def _draw_balanced(labels, lesion, num_lesion, balance_subtypes, redraw, seed, epoch):
  rng = np.random.default_rng([int(seed), 7, int(epoch) if redraw else 0])
  return balanced_records(labels, lesion, num_lesion, rng, balance_subtypes=balance_subtypes)


def epoch_sampler(source, cfg, *, seed: int = 0) -> EpochSampler | None:
  """The training epochs `config.data` asks for, or None for plain epochs (every record once)."""
  repeat = int(cfg.get("small_bleed_repeat", 1))
  if repeat < 1:
    raise ValueError(f"config data.small_bleed_repeat={repeat}: need >= 1")
  sampling = cfg.get("sampling", None) or config_defaults.default_data_config().sampling
  mode = sampling.get("mode", "all")
  if mode not in SAMPLING_MODES:
    raise ValueError(f"config data.sampling.mode={mode!r}; expected one of {SAMPLING_MODES}")
  if mode == "all" and repeat == 1:
    return None
  lesion_kind = sampling.get("lesion", "any") if mode != "all" else "any"
  small = repeat > 1 or lesion_kind == "small"
  by_scan = mode == "balanced_scans"
  if by_scan and sampling.get("redraw_each_epoch", False):
    raise ValueError("config data.sampling.redraw_each_epoch=True with mode='balanced_scans': scans differ in "
                     "slice count, so every epoch must be the one drawn set; set it False")
  src = series_index.as_series_source(source)
  try:
    meta = src.metadata(("labels",) + (("study_blood_ml",) if small else ()) + (("study_id",) if by_scan else ()))
  except datasets.MissingField as e:
    key, i = e.key, e.record
    why = (f"config data.small_bleed_repeat={repeat}" if repeat > 1 else
           f"config data.sampling.lesion={lesion_kind!r}")
    raise ValueError(f"{why} needs the field {key}, which record {i} of this dataset lacks"
                     + (" (datasets without masks have no volumes)" if key == "study_blood_ml" else "")) from None
  labels = meta["labels"].astype(np.float32).reshape(len(src), -1)
  blood = labels[:, 0] > 0.5
  if small:
    volume = meta["study_blood_ml"].astype(np.float64).reshape(-1)
    small_blood = blood & (volume > 0) & (volume <= float(cfg.get("small_bleed_ml", 5.0)))
  if mode == "all":
    counts = np.where(small_blood, repeat, 1)
    records = np.repeat(np.arange(len(labels), dtype=np.int64), counts)
    return EpochSampler(len(records), functools.partial(_draw_fixed, records))
  if lesion_kind == "any":
    lesion = blood
  elif lesion_kind == "small":
    lesion = small_blood
  elif lesion_kind in LABELS[1:]:
    lesion = labels[:, LABELS.index(lesion_kind)] > 0.5
  else:
    raise ValueError(f"config data.sampling.lesion={lesion_kind!r}; expected 'any', 'small' or one of {LABELS[1:]}")
  if not lesion.any():
    raise ValueError(f"config data.sampling.lesion={lesion_kind!r}: no training slice is a lesion slice")
  if by_scan:
    # Seed 000 §2.2.1 balances cases (scans), by study as the scan-level metrics group them; drawn once.
    study = meta["study_id"].reshape(-1)
    num_scans = int(sampling.get("num_lesion", 0)) or len(np.unique(study[lesion]))
    records = balanced_scan_records(study, lesion, ~blood, num_scans, np.random.default_rng([int(seed), 7, 0]))
    return EpochSampler(len(records), functools.partial(_draw_fixed, records))
  num_lesion = int(sampling.get("num_lesion", 0)) or int(lesion.sum())
  balance = bool(sampling.get("balance_subtypes", True)) and lesion_kind in ("any", "small")
  draw = functools.partial(_draw_balanced, labels, lesion, num_lesion, balance,
                           bool(sampling.get("redraw_each_epoch", False)), seed)
  return EpochSampler(2 * num_lesion, draw)


def sample_records(sampler: EpochSampler | None, ds: grain.MapDataset) -> grain.MapDataset:
  """Maps the shuffled slot stream to record indices (identity for plain epochs)."""
  if sampler is None:
    return ds
  return ds.map_with_index(sampler.record)
