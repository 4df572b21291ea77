"""What the real-dataset builders (`rsna_ich`, `physionet_ct_ich`, `cq500`) share.

* `IngestBuilder`: a ShardBasedBuilder (GeneratorBasedBuilder's shuffler needs
  TensorFlow past 1 GB) writing several shards per split, with one "spawn"
  process pool for the whole build and a build report.
* The build report: every file that was skipped (file, reason) and every
  data quirk worth knowing (notes), saved as `build_report.json` next to the
  dataset (in the version folder, beside `dataset_info.json`) and summarised
  when the build ends. One bad file never stops a build; a label that cannot be
  joined to an image (or the reverse) does, naming both.
* Tolerant DICOM slice headers, slice order along the normal, build-time
  resizing to the config's resolution, and the feature schemas.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import pathlib
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ich_jax import LABELS
from ich_jax.data import dicom, resample
from ich_jax.data.series_selection import first_value, slice_normal

REPORT_FILE = "build_report.json"
AIR_HU = -1024
# Neighbouring slices closer than this along the normal share a position.
DUPLICATE_TOLERANCE_MM = dicom.POSITION_TOLERANCE_MM


# --- The build report ---------------------------------------------------------


@dataclasses.dataclass
class Result:
  """What one worker task returns: its examples and what it skipped or noticed."""
  examples: list = dataclasses.field(default_factory=list)     # [(key, example dict)]
  skipped: list = dataclasses.field(default_factory=list)      # [(file, reason)]
  notes: list = dataclasses.field(default_factory=list)        # [(file, message)]
  extra: dict = dataclasses.field(default_factory=dict)        # builder-specific, read by the parent


class BuildReport:
  """Skipped files (file, reason), notes, counts and builder sections; written as JSON."""

  def __init__(self, name: str):
    self.name = name
    self.skipped: list[tuple[str, str]] = []
    self.notes: list[tuple[str, str]] = []
    self.counts: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    self.sections: dict[str, object] = {}

  def skip(self, file, reason: str) -> None:
    self.skipped.append((str(file), reason))

  def note(self, file, message: str) -> None:
    self.notes.append((str(file), message))

  def add(self, result: Result) -> None:
    self.skipped.extend((str(f), r) for f, r in result.skipped)
    self.notes.extend((str(f), m) for f, m in result.notes)

  def count(self, split: str, what: str, n: int = 1) -> None:
    if n:
      self.counts[split][what] += n

  def to_dict(self) -> dict:
    return {
        "dataset": self.name,
        "skipped": [{"file": f, "reason": r} for f, r in sorted(set(self.skipped))],
        "notes": [{"file": f, "note": m} for f, m in sorted(set(self.notes))],
        "counts": {s: dict(c) for s, c in sorted(self.counts.items())},
        **self.sections,
    }

  def write(self, path) -> None:
    pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")

  def summary(self, limit: int = 20) -> str:
    d = self.to_dict()
    lines = [f"{self.name}: " + "; ".join(
        f"{split} " + ", ".join(f"{n:,} {what}" for what, n in sorted(c.items())) for split, c in d["counts"].items())]
    lines.append(f"  {len(d['skipped'])} skipped, {len(d['notes'])} notes (all in {REPORT_FILE})")
    for item in d["skipped"][:limit]:
      lines.append(f"  skipped {item['file']}: {item['reason']}")
    if len(d["skipped"]) > limit:
      lines.append(f"  ... and {len(d['skipped']) - limit} more skipped")
    return "\n".join(lines)


# --- The builder ----------------------------------------------------------------


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


class IngestBuilder(tfds.core.ShardBasedBuilder):
  """Base of the real-dataset builders: a process pool, shards by weight, a build report.

  Subclasses implement `_info` and `_plan(manual_dir)`, returning per split a
  list of (task, weight) plus the worker function; `_postprocess(split, result)`
  may edit a task's examples in the parent (e.g. join boxes) before they are
  written.
  """

  # Written in the version folder, next to dataset_info.json.
  report: BuildReport | None = None

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
    return [functools.partial(self._run_shard, split, fn, [tasks[i] for i in g]) for g in groups]

  def _run_shard(self, split: str, fn: Callable, tasks: Sequence):
    for result in self._map(fn, tasks):
      self._postprocess(split, result)
      self.report.add(result)
      self.report.count(split, "examples", len(result.examples))
      yield from result.examples

  def _postprocess(self, split: str, result: Result) -> None:
    del split, result

  def _finish_report(self) -> None:
    """Adds builder-specific sections once every shard is written."""


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


# --- Feature schemas ----------------------------------------------------------------


def _text():
  return tfds.features.Text()


BYTES_RELEASE_NOTE = ("image/mask/volume stored as raw bytes (Encoding.BYTES) instead of int64 varint lists: "
                      "the same values, about 2× faster to read.")


def pixels(shape: tuple, dtype) -> tfds.features.Tensor:
  """An image, mask or volume feature: stored as raw bytes (`Encoding.BYTES`).

  TFDS's default encoding stores an integer Tensor as an int64 varint list in
  the tf.train.Example: int16 air (-1000 HU) takes ten bytes as a negative
  varint, so a 256×256 slice with its mask is ~570 kB instead of 192 kB, and
  every read pays the varint decode (docs/PERFORMANCE.md, Input pipeline: about 2× the read time).
  Raw bytes decode with one `np.frombuffer`; ArrayRecord still compresses the
  record (zstd). The decoded arrays are read-only views of the record.
  """
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)


def slice_features(resolution: int, *, mask: bool, extra: dict | None = None) -> tfds.features.FeaturesDict:
  """The slice schema of `synthetic_ich` (image int16 HU, labels float32[6] in LABELS order, ids, geometry)."""
  r = resolution
  f = {
      "image": pixels((r, r), np.int16),
      "labels": tfds.features.Tensor(shape=(len(LABELS),), dtype=np.float32),
      "patient_id": _text(),
      "study_id": _text(),
      "series_id": _text(),
      "slice_index": tfds.features.Scalar(dtype=np.int32),
      "z_position": tfds.features.Scalar(dtype=np.float32),
      "pixel_spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
      "slice_thickness": tfds.features.Scalar(dtype=np.float32),
  }
  if mask:
    f["mask"] = pixels((r, r), np.uint8)  # 0 or subtype index 1-5
  f.update(extra or {})
  return tfds.features.FeaturesDict(f)


def scan_features(resolution: int, *, mask: bool, per_slice_labels: bool = True,
                  extra: dict | None = None) -> tfds.features.FeaturesDict:
  """One example per series: `volume` int16 [S, r, r], labels [S, 6] (or [6]), z_positions [S], ids."""
  r = resolution
  f = {
      "volume": pixels((None, r, r), np.int16),
      "labels": tfds.features.Tensor(shape=(None, len(LABELS)) if per_slice_labels else (len(LABELS),),
                                     dtype=np.float32),
      "z_positions": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      "slice_thickness": tfds.features.Scalar(dtype=np.float32),
      "pixel_spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
      "patient_id": _text(),
      "study_id": _text(),
      "series_id": _text(),
  }
  if mask:
    f["mask"] = pixels((None, r, r), np.uint8)
  f.update(extra or {})
  return tfds.features.FeaturesDict(f)


def to_scan_example(slices: Sequence[dict], *, per_slice_labels: bool = True,
                    keys: Sequence[str] = (), stacked: Sequence[str] = ()) -> dict:
  """A scan example from the series' slice examples (already in order).

  `keys` are copied from the first slice; `stacked` are stacked over slices.
  """
  first = slices[0]
  out = {
      "volume": np.stack([s["image"] for s in slices]),
      "labels": (np.stack([s["labels"] for s in slices]) if per_slice_labels else first["labels"]),
      "z_positions": np.asarray([s["z_position"] for s in slices], np.float32),
      "slice_thickness": first["slice_thickness"],
      "pixel_spacing": first["pixel_spacing"],
      "patient_id": first["patient_id"],
      "study_id": first["study_id"],
      "series_id": first["series_id"],
  }
  if "mask" in first:
    out["mask"] = np.stack([s["mask"] for s in slices])
  for k in keys:
    out[k] = first[k]
  for k in stacked:
    out[k] = np.stack([np.asarray(s[k]) for s in slices]) if not isinstance(first[k], str) else [s[k] for s in slices]
  return out


# --- Resizing to the stored resolution -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fit:
  """How a slice of `shape` maps to the stored size×size: pad to square, then scale."""
  shape: tuple[int, int]
  size: int

  @property
  def side(self) -> int:
    return max(self.shape)

  @property
  def offset(self) -> tuple[int, int]:
    """Rows, columns of padding before the image (centred)."""
    return ((self.side - self.shape[0]) // 2, (self.side - self.shape[1]) // 2)

  @property
  def scale(self) -> float:
    """Stored pixels per original pixel."""
    return self.size / self.side

  def spacing(self, pixel_spacing) -> np.ndarray:
    return (np.asarray(pixel_spacing, np.float64) / self.scale).astype(np.float32)

  def point(self, row: float, col: float) -> tuple[float, float]:
    """An original pixel coordinate (row, col; pixel edges) in stored pixels."""
    return ((row + self.offset[0]) * self.scale, (col + self.offset[1]) * self.scale)

  def _pad(self, a: np.ndarray, fill) -> np.ndarray:
    if self.shape[0] == self.shape[1]:
      return a
    out = np.full(a.shape[:-2] + (self.side, self.side), fill, a.dtype)
    r, c = self.offset
    out[..., r:r + self.shape[0], c:c + self.shape[1]] = a
    return out

  def image(self, hu: np.ndarray) -> np.ndarray:
    """HU [..., H, W] → int16 [..., size, size]: block mean for integer factors (partial volume), else linear."""
    a = self._pad(np.asarray(hu), AIR_HU)
    if self.side == self.size:
      out = a
    elif self.side % self.size == 0:
      out = resample.area_downsample(a.astype(np.float32), self.size)
    else:
      out = _zoom(a.astype(np.float32), self.size, order=1)
    info = np.iinfo(np.int16)
    return np.clip(np.rint(out), info.min, info.max).astype(np.int16)

  def mask(self, blood: np.ndarray) -> np.ndarray:
    """Boolean [..., H, W] → [..., size, size]: a stored pixel is blood if any original pixel in it is."""
    a = self._pad(np.asarray(blood, bool), False)
    if self.side == self.size:
      return a
    if self.side % self.size == 0:
      return resample.any_downsample(a, self.size)
    return _zoom(a.astype(np.float32), self.size, order=1) > 0


def _zoom(a: np.ndarray, size: int, order: int) -> np.ndarray:
  from scipy import ndimage

  zoom = (1,) * (a.ndim - 2) + (size / a.shape[-2], size / a.shape[-1])
  return ndimage.zoom(a, zoom, order=order, mode="nearest", grid_mode=True)


# --- DICOM slices ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SliceHeader:
  """The header fields a builder needs to place a slice; read without pixels."""
  path: str
  sop_uid: str
  patient_id: str
  study_uid: str
  series_uid: str
  position: tuple[float, float, float]
  orientation: tuple[float, ...]
  pixel_spacing: tuple[float, float]
  rows: int
  cols: int
  slice_thickness: float            # nan if absent
  window: tuple[float, float]       # first WindowCenter, first WindowWidth; nan if absent


# RSNA's UIDs are "ID_<hex>", not valid UIDs (datasets.md): pydicom warns and logs
# on every access, hundreds of thousands of times per build. Only that message is silenced.
_UID_WARNING = "Invalid value for VR UI"


class _NoUidWarning(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_UID_WARNING)


class quiet:
  """Context: pydicom's invalid-UID warning silenced (warnings and the "pydicom" logger), nothing else."""

  _filter = _NoUidWarning()

  def __enter__(self):
    self._ctx = warnings.catch_warnings()
    self._ctx.__enter__()
    warnings.filterwarnings("ignore", message=_UID_WARNING)
    logging.getLogger("pydicom").addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    logging.getLogger("pydicom").removeFilter(self._filter)
    return self._ctx.__exit__(*exc)


def _tag_floats(ds, path, keyword: str, n: int) -> tuple[float, ...]:
  value = ds.get(keyword)
  if value is None or value == "":
    raise dicom.DicomError(f"{path}: missing required tag {keyword}")
  values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
  try:
    out = tuple(float(v) for v in values)
  except (TypeError, ValueError) as e:
    raise dicom.DicomError(f"{path}: {keyword} is not numeric: {value!r}") from e
  if len(out) != n or not all(math.isfinite(v) for v in out):
    raise dicom.DicomError(f"{path}: {keyword} needs {n} finite numbers, got {value!r}")
  return out


def _tag_text(ds, path, keyword: str) -> str:
  value = ds.get(keyword)
  if value is None or str(value).strip() == "":
    raise dicom.DicomError(f"{path}: missing required tag {keyword}")
  return str(value).strip()


def slice_header(path, ds) -> SliceHeader:
  """A SliceHeader from a read header; DicomError naming the file and tag if one is missing or malformed."""
  o = _tag_floats(ds, path, "ImageOrientationPatient", 6)
  if slice_normal(o) is None:
    raise dicom.DicomError(f"{path}: ImageOrientationPatient {list(o)} has parallel or zero directions")
  rows, cols = ds.get("Rows"), ds.get("Columns")
  if not rows or not cols:
    raise dicom.DicomError(f"{path}: missing required tag {'Rows' if not rows else 'Columns'}")
  return SliceHeader(
      path=str(path), sop_uid=_tag_text(ds, path, "SOPInstanceUID"),
      patient_id=str(ds.get("PatientID", "") or "").strip(),
      study_uid=_tag_text(ds, path, "StudyInstanceUID"), series_uid=_tag_text(ds, path, "SeriesInstanceUID"),
      position=_tag_floats(ds, path, "ImagePositionPatient", 3), orientation=o,
      pixel_spacing=_tag_floats(ds, path, "PixelSpacing", 2), rows=int(rows), cols=int(cols),
      slice_thickness=first_value(ds.get("SliceThickness")),
      window=(first_value(ds.get("WindowCenter")), first_value(ds.get("WindowWidth"))))


def read_slice_header(path) -> SliceHeader:
  with quiet():
    return slice_header(path, dicom.read_header(path))


def read_slice_headers(paths: Sequence) -> Result:
  """Worker task: headers of many files; unreadable ones are skipped with the reason."""
  out = Result()
  for path in paths:
    try:
      out.examples.append(read_slice_header(path))
    except dicom.DicomError as e:
      out.skipped.append((path, reason(e, path)))
  return out


def reason(error: Exception, path) -> str:
  """The error message without the leading file name (the report has a file column)."""
  msg = str(error)
  prefix = f"{path}: "
  return msg[len(prefix):] if msg.startswith(prefix) else msg


@dataclasses.dataclass
class OrderedSeries:
  slices: list[SliceHeader]      # ascending along the normal; ties by SOPInstanceUID
  z: np.ndarray                  # float64 [S]
  gap: float                     # median positive gap (mm); nan for one slice
  thickness: float               # SliceThickness (median over slices), else the gap
  rejected: list[tuple[str, str]]
  notes: list[tuple[str, str]]


def order_slices(slices: Sequence[SliceHeader]) -> OrderedSeries:
  """Sorts one series along its normal (datasets.md, RSNA "Slice order").

  The normal is cross(row, column) of the series' most common orientation; a
  slice with another orientation cannot be placed and is rejected (a reason,
  not an error). z is ImagePositionPatient projected on the normal, so a
  gantry-tilted series (positions stepping along the table, not the normal)
  sorts and spaces correctly. Duplicate positions are kept, ordered by
  SOPInstanceUID, and noted; irregular gaps are noted.
  """
  keyed = [(tuple(np.round(s.orientation, 4)), s) for s in slices]
  counts = collections.Counter(k for k, _ in keyed)
  majority = max(counts, key=lambda k: (counts[k], k))
  # The normal from a slice's own cosines: the rounded key would move z by ~1e-3 mm per 100 mm.
  normal = slice_normal(next(s.orientation for k, s in keyed if k == majority))
  kept, rejected = [], []
  for k, s in keyed:
    if np.allclose(k, majority, atol=dicom.ORIENTATION_TOLERANCE * 10):
      kept.append(s)
    else:
      rejected.append((s.path, f"ImageOrientationPatient {list(s.orientation)} differs from the series' "
                                f"{list(majority)} ({counts[majority]} of {len(slices)} slices)"))
  z = np.asarray([np.dot(s.position, normal) for s in kept])
  order = sorted(range(len(kept)), key=lambda i: (z[i], kept[i].sop_uid))
  kept, z = [kept[i] for i in order], z[order]
  notes = []
  gaps = np.diff(z)
  for i in np.flatnonzero(gaps < DUPLICATE_TOLERANCE_MM):
    notes.append((kept[i + 1].path, f"duplicate slice position z={z[i]:.3f} mm, also {kept[i].path}; "
                                    "both kept, ordered by SOPInstanceUID"))
  positive = gaps[gaps >= DUPLICATE_TOLERANCE_MM]
  gap = float(np.median(positive)) if positive.size else float("nan")
  if positive.size and (positive.max() > 1.5 * gap or positive.min() < gap / 1.5):
    notes.append((kept[0].path, f"series {kept[0].series_uid}: varying slice gaps {positive.min():.3f}–"
                                f"{positive.max():.3f} mm (median {gap:.3f}); z_positions carry them"))
  tags = [s.slice_thickness for s in kept if math.isfinite(s.slice_thickness) and s.slice_thickness > 0]
  thickness = float(np.median(tags)) if tags else gap
  return OrderedSeries(kept, z, gap, thickness, rejected, notes)


def mixed_matrix(slices: Sequence[SliceHeader]) -> list[tuple[str, str]]:
  """(file, reason) for every slice of a series whose slices differ in Rows/Columns; [] when they agree.

  Resizing each slice to the stored size on its own would stack different
  fields of view as one volume, with one pixel spacing; `dicom.load_series`
  (prediction) refuses such a series, so a build skips it, naming the sizes.
  """
  sizes = collections.Counter((s.rows, s.cols) for s in slices)
  if len(sizes) < 2:
    return []
  example = {}
  for s in slices:
    example.setdefault((s.rows, s.cols), s.path)
  summary = "; ".join(f"{r}x{c}: {n} slice{'s' * (n > 1)}, e.g. {example[(r, c)]}"
                      for (r, c), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))
  return [(s.path, f"Rows/Columns {s.rows}x{s.cols}, but series {s.series_uid} mixes matrix sizes ({summary}): "
                   "series not built") for s in slices]


def read_pixels(path, hu_fn: Callable = dicom.to_hu):
  """`hu_fn(dataset)` of one file (default: HU, float32); DicomError naming the file and transfer syntax on failure."""
  with quiet():
    ds = dicom._read(pathlib.Path(path))  # same content sniffing as load_series
    if ds is None:
      raise dicom.DicomError(f"{path}: not a DICOM file")
    if "PixelData" not in ds:
      raise dicom.DicomError(f"{path}: missing required tag PixelData")
    try:
      return hu_fn(ds)
    except dicom.DicomError:
      raise
    except Exception as e:  # decoders raise anything: name the file and the syntax
      meta = getattr(ds, "file_meta", None)
      syntax = meta.get("TransferSyntaxUID", "?") if meta is not None else "?"
      name = getattr(syntax, "name", syntax)
      raise dicom.DicomError(f"{path}: cannot decode PixelData (TransferSyntaxUID {name}): "
                             f"{type(e).__name__}: {e}") from e

