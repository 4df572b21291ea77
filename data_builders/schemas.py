"""The feature schemas every builder writes: slices and scans, pixels stored as raw bytes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from ich_jax import LABELS


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
