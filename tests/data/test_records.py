"""`ich_jax.data.records`: records decoded from their tf.train.Example bytes equal TFDS's decoding."""

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from ich_jax.data import datasets, records


def assert_same_record(got: dict, want: dict):
  """Same keys, Python types, dtypes, shapes, writeability and values as TFDS's decoding."""
  assert got.keys() == want.keys()
  for k, w in want.items():
    g = got[k]
    assert type(g) is type(w), (k, type(g), type(w))
    if isinstance(w, np.ndarray):
      assert (g.dtype, g.shape, g.flags.writeable) == (w.dtype, w.shape, w.flags.writeable), k
      np.testing.assert_array_equal(g, w, err_msg=k)
    else:
      assert g == w or (isinstance(w, float) and np.isnan(w) and np.isnan(g)), k   # missing tags are NaN


def _features():
  Tensor, Encoding = tfds.features.Tensor, tfds.features.Encoding
  return tfds.features.FeaturesDict({
      "image": Tensor(shape=(4, 5), dtype=np.int16, encoding=Encoding.BYTES),
      "volume": Tensor(shape=(None, 4, 5), dtype=np.int16, encoding=Encoding.BYTES),   # one unknown dim
      "mask": Tensor(shape=(None, None), dtype=np.uint8, encoding=Encoding.BYTES),     # shape stored beside
      "packed": Tensor(shape=(3, 2), dtype=np.int32, encoding=Encoding.ZLIB),
      "packed_ragged": Tensor(shape=(None, None), dtype=np.float32, encoding=Encoding.ZLIB),
      "varint": Tensor(shape=(4, 5), dtype=np.int16),                                  # int64 list
      "labels": Tensor(shape=(6,), dtype=np.float32),
      "boxes": Tensor(shape=(None, 2, 4), dtype=np.float32),
      "flags": Tensor(shape=(3,), dtype=np.bool_),
      "slice_index": tfds.features.Scalar(dtype=np.int32),
      "mimic": tfds.features.Scalar(dtype=np.uint8),
      "z_position": tfds.features.Scalar(dtype=np.float32),
      "thickness": tfds.features.Scalar(dtype=np.float64),
      "chronic": tfds.features.Scalar(dtype=np.bool_),
      "series_id": tfds.features.Text(),
  })


def _example(rng, n: int) -> dict:
  return {
      "image": rng.integers(-1024, 3000, (4, 5)).astype(np.int16),
      "volume": rng.integers(-1024, 3000, (n, 4, 5)).astype(np.int16),
      "mask": rng.integers(0, 6, (n, n + 1)).astype(np.uint8),
      "packed": rng.integers(-9, 9, (3, 2)).astype(np.int32),
      "packed_ragged": rng.random((n + 1, n)).astype(np.float32),
      "varint": rng.integers(-1024, 3000, (4, 5)).astype(np.int16),
      "labels": rng.random(6).astype(np.float32),
      "boxes": rng.random((n, 2, 4)).astype(np.float32),
      "flags": rng.random(3) < 0.5,
      "slice_index": int(rng.integers(0, 99)),
      "mimic": 1,
      "z_position": float(rng.normal()),       # not float32-exact: stored rounded
      "thickness": 2.5,
      "chronic": True,
      "series_id": f"1.2.3.{n}",
  }


def test_decoder_equals_tfds_for_every_feature_kind_it_handles():
  features = _features()
  decoder = records.ExampleDecoder.for_features(features)
  assert decoder is not None
  rng = np.random.default_rng(0)
  for n in (1, 3):
    serialized = features.serialize_example(_example(rng, n))
    assert_same_record(decoder(serialized), features.deserialize_example_np(serialized))


@pytest.mark.parametrize("feature", [
    tfds.features.Sequence(tfds.features.Text()),
    tfds.features.ClassLabel(num_classes=3),
    tfds.features.Tensor(shape=(2,), dtype=np.float32, optional=True),
    tfds.features.Tensor(shape=(2,), dtype=np.uint64),
])
def test_other_feature_kinds_keep_tfds_decoding(feature):
  features = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(2,), dtype=np.int16), "x": feature})
  assert records.ExampleDecoder.for_features(features) is None


def test_a_record_that_does_not_decode_names_the_feature():
  features = _features()
  decoder = records.ExampleDecoder.for_features(features)
  other = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(4, 5), dtype=np.int16)})
  with pytest.raises(ValueError, match="'image'.*bytes"):   # stored as a list, expected as bytes
    decoder(other.serialize_example({"image": np.zeros((4, 5), np.int16)}))


def test_open_split_reads_the_records_tfds_decodes(tiny_data_dir):
  config = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": tiny_data_dir})
  source = datasets.open_split(config, "train")
  assert isinstance(source, records.DecodedSource)
  reference = datasets.builder(config).as_data_source(split="train")
  assert len(source) == len(reference)
  for i in range(len(reference)):
    assert_same_record(source[i], reference[i])
  ids = [5, 0, 5]
  for got, i in zip(source.__getitems__(ids), ids):
    assert_same_record(got, reference[i])
  # grain's worker processes get the source pickled.
  assert_same_record(pickle.loads(pickle.dumps(source))[3], reference[3])
