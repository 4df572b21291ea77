"""TFDS records decoded straight from their tf.train.Example bytes.

`tfds.data_source` decodes each record feature by feature through generic
Python (flatten, per-feature dispatch, error contexts): ~0.1 ms of a 0.5 ms
slice read (docs/PERFORMANCE.md, Input pipeline). The builders' features are
a few plain kinds (`Tensor` stored as a value list or as bytes, `Scalar`,
`Text`), so `ExampleDecoder` parses the proto once and makes each value with
one numpy call: the same keys, types, dtypes, shapes and values as TFDS's
`deserialize_example_np`, pixel arrays again read-only views of the record.
Datasets with any other feature kind keep TFDS's decoding (`decoded_source`).
Parsing uses the protobuf runtime TFDS ships (`tensorflow_datasets.proto`), no
TensorFlow.
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

# (name, how, dtype, shape): how the value is stored in the proto (a key of _READERS).
_Field = tuple[str, str, Any, tuple]


def _fields(features) -> list[_Field] | None:
  """The decoding plan of a FeaturesDict, or None if a feature is not of a kind handled here."""
  import tensorflow_datasets as tfds

  Encoding = tfds.features.Encoding
  plan = []
  for name, f in features.items():
    kind = type(f)
    if kind is tfds.features.Text:
      if f.encoder is not None:
        return None
      plan.append((name, "text", None, ()))
      continue
    # Optional features may be absent from a record (TFDS then fills in defaults).
    if kind not in (tfds.features.Tensor, tfds.features.Scalar) or getattr(f, "_optional", True):
      return None
    dtype = np.dtype(f.np_dtype)
    if dtype.kind not in "biuf" or dtype == np.uint64:  # uint64 travels bit-cast to int64 lists
      return None
    shape = tuple(f.shape)
    if f._encoding == Encoding.NONE:  # pylint: disable=protected-access
      plan.append((name, "list" if shape else "scalar", dtype, shape))
    elif f._encoding in (Encoding.BYTES, Encoding.ZLIB):  # pylint: disable=protected-access
      how = "zlib" if f._encoding == Encoding.ZLIB else "bytes"  # pylint: disable=protected-access
      # Several unknown dimensions: TFDS stores the shape beside the bytes (`name/shape`).
      plan.append((name, how + ("_shaped" if shape.count(None) > 1 else ""), dtype, shape))
    else:
      return None
  return plan


def _values(feature):
  kind = feature.WhichOneof("kind")
  if kind is None:
    raise ValueError("the feature holds no value list")
  return getattr(feature, kind).value


def _text(feature_map, name, dtype, shape):
  return feature_map[name].bytes_list.value[0]


# What np.array([v], dtype).item() returns for the proto's value v (float_list
# values are already the stored float32, as Python floats).
_PYTHON_SCALAR = {"f": float, "i": int, "u": int, "b": bool}


def _scalar(feature_map, name, dtype, shape):
  values = _values(feature_map[name])
  if len(values) != 1:
    raise ValueError(f"{len(values)} values for a scalar")
  return _PYTHON_SCALAR[dtype.kind](values[0])


def _list(feature_map, name, dtype, shape):
  return np.array(_values(feature_map[name]), dtype).reshape(shape)


def _bytes(feature_map, name, dtype, shape):
  return np.frombuffer(feature_map[name].bytes_list.value[0], dtype).reshape(shape)


def _zlib(feature_map, name, dtype, shape):
  return np.frombuffer(zlib.decompress(feature_map[name].bytes_list.value[0]), dtype).reshape(shape)


def _shaped(feature_map, name, dtype, shape):
  data = feature_map[f"{name}/value"].bytes_list.value[0]
  stored = feature_map[f"{name}/shape"].int64_list.value
  shape = tuple(int(s) if d is None else d for s, d in zip(stored, shape))
  return np.frombuffer(data, dtype).reshape(shape)


def _zlib_shaped(feature_map, name, dtype, shape):
  data = zlib.decompress(feature_map[f"{name}/value"].bytes_list.value[0])
  stored = feature_map[f"{name}/shape"].int64_list.value
  return np.frombuffer(data, dtype).reshape(tuple(int(s) if d is None else d for s, d in zip(stored, shape)))


_READERS = {"text": _text, "scalar": _scalar, "list": _list, "bytes": _bytes, "zlib": _zlib,
            "bytes_shaped": _shaped, "zlib_shaped": _zlib_shaped}


class ExampleDecoder:
  """Serialized tf.train.Example → dict of numpy values, equal to TFDS's `deserialize_example_np`.

  Build with `ExampleDecoder.for_features(features)`, which returns None for a
  FeaturesDict this decoder does not handle.
  """

  def __init__(self, fields: Sequence[_Field]):
    self.fields = tuple(fields)
    # Shapes as reshape takes them (-1 for the one unknown dimension), except where the record stores its shape.
    self._plan = tuple((name, _READERS[how], dtype, shape if how.endswith("_shaped")
                        else tuple(-1 if d is None else d for d in shape))
                       for name, how, dtype, shape in self.fields)

  def __reduce__(self):
    return (type(self), (self.fields,))

  @classmethod
  def for_features(cls, features) -> "ExampleDecoder | None":
    fields = _fields(features)
    return None if fields is None else cls(fields)

  def __call__(self, record: bytes) -> dict:
    from tensorflow_datasets.proto import tf_example_pb2

    feature_map = tf_example_pb2.Example.FromString(record).features.feature
    out = {}
    for name, read, dtype, shape in self._plan:
      try:
        out[name] = read(feature_map, name, dtype, shape)
      except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"record feature {name!r} ({read.__name__.strip('_')}, {dtype}, shape {shape}) does not "
                         f"decode: {type(e).__name__}: {e}") from None
    return out


class DecodedSource:
  """A TFDS data source opened with `deserialize_method=RAW_BYTES`, decoded by an `ExampleDecoder`."""

  def __init__(self, raw, decoder: ExampleDecoder):
    self.raw = raw
    self.decoder = decoder

  def __len__(self) -> int:
    return len(self.raw)

  def __getitem__(self, i: int) -> dict:
    return self.decoder(self.raw[i])

  def __getitems__(self, ids: Sequence[int]) -> list[dict]:
    # One record at a time: ArrayRecord's batched read spends more CPU per
    # record (its thread pool) than it saves (docs/PERFORMANCE.md, Input pipeline).
    return [self.decoder(self.raw[int(i)]) for i in ids]

  def __repr__(self) -> str:
    return f"DecodedSource({self.raw!r})"


def decoded_source(builder, split: str):
  """`builder.as_data_source(split)`, decoded by `ExampleDecoder` where its features allow (else TFDS's own)."""
  import tensorflow_datasets as tfds

  decoder = ExampleDecoder.for_features(builder.info.features)
  if decoder is None:
    return builder.as_data_source(split=split)
  return DecodedSource(builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES),
                       decoder)
