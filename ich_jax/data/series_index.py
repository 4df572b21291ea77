"""A slice source that knows its series: the (series_id, slice_index) → record index that neighbour slices need.

A source is anything with `len(src)` and `src[i]` -> dict of numpy values in
the `synthetic_ich` schema (`image` int16 HU [H, W], `labels`, `mask`,
`series_id`, `slice_index`, ... ); `tfds.data_source(...)` and a list of dicts
both qualify. Records may be in any order: neighbouring slices are found
through the index `SeriesSource` builds once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ich_jax.data import datasets, windows


class SeriesSource:
  """A random-access source plus a lazily built, cached (series_id, slice_index) index.

  Wrap a split once and pass the wrapper to every pipeline, so the index (one
  pass over the split) is built once. The index is only needed by recipes with
  nonzero slice offsets.

  Args:
    source: random-access source in the slice schema.
    metadata_source: optional second source over the same records in the same
      order that is cheaper to read, used only to build the index; e.g. for
      TFDS, `tfds.data_source(..., decoders={"image": tfds.decode.SkipDecoding(),
      "mask": tfds.decode.SkipDecoding()})`. Without it the index pass reads
      full records (`__getitems__` in chunks where the source has it).
  """

  def __init__(self, source, metadata_source=None):
    self.source = source
    self._metadata_source = metadata_source
    self._index: dict[bytes, tuple[np.ndarray, np.ndarray]] | None = None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(i)]

  def __getstate__(self):
    # Workers get the index if it was built; the metadata source is not needed there.
    return {"source": self.source, "_metadata_source": None, "_index": self._index}

  @property
  def index(self) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """series_id -> (sorted slice indices, record indices in the same order)."""
    if self._index is None:
      self._index = _build_index(self._metadata_source or self.source, len(self))
    return self._index

  def metadata(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """`keys` of every record, in record order, from the cheapest source available."""
    return datasets.read_fields(self._metadata_source or self.source, keys)

  def neighbours(self, series_id, slice_index: int, offsets: Sequence[int]) -> dict[int, int]:
    """offset -> record index of the slice to use (nearest existing slice if absent)."""
    key = as_bytes(series_id)
    if key not in self.index:
      raise KeyError(f"series_id={key!r} is not in the series index (was metadata_source built from another split?)")
    slices, records = self.index[key]
    chosen = windows.select_neighbours(slices, int(slice_index), offsets)
    return {o: int(records[np.searchsorted(slices, s)]) for o, s in chosen.items()}


def as_series_source(source) -> SeriesSource:
  return source if isinstance(source, SeriesSource) else SeriesSource(source)


def as_bytes(x) -> bytes:
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.encode() if isinstance(x, str) else bytes(x)


def _build_index(source, n: int, chunk: int = 1024):
  keys: dict[bytes, list[tuple[int, int]]] = {}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    ids = range(start, min(n, start + chunk))
    records = getitems(list(ids)) if getitems is not None else [source[i] for i in ids]
    for i, rec in zip(ids, records):
      keys.setdefault(as_bytes(rec["series_id"]), []).append((int(rec["slice_index"]), i))
  index = {}
  for series, pairs in keys.items():
    pairs.sort()
    slices = np.array([s for s, _ in pairs], np.int64)
    dup = np.flatnonzero(np.diff(slices) == 0)
    if dup.size:
      s = slices[dup[0]]
      recs = [i for sl, i in pairs if sl == s]
      raise ValueError(f"series_id={series!r} has slice_index={s} in several records: {recs}")
    index[series] = (slices, np.array([i for _, i in pairs], np.int64))
  return index
