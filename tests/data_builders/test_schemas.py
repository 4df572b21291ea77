"""The feature schemas: pixels stored as raw bytes by every builder config."""
import numpy as np
import pytest


@pytest.mark.parametrize("name", ["synthetic_ich", "rsna_ich", "physionet_ct_ich", "cq500"])
def test_pixel_features_are_stored_as_raw_bytes(name, tmp_path):
  # TFDS's default (int64 varint lists) makes every record ~3x larger and reads ~2x
  # slower (docs/PERFORMANCE.md, Input pipeline); every config must use schemas.pixels.
  from ich_jax.data import datasets
  cls = datasets.builder_class(name)
  for config in cls.BUILDER_CONFIGS:
    features = cls(data_dir=str(tmp_path), config=config.name, file_format="array_record").info.features
    stored = [k for k in ("image", "mask", "volume") if k in features]
    assert stored, config.name
    for key in stored:
      assert features[key].to_json_content().encoding == "bytes", (name, config.name, key)
    # Decoding a serialized example gives the int16 / uint8 values back, exactly.
    if "image" in stored:
      r = features["image"].shape[0]
      hu = (np.arange(r * r) % 4000 - 1024).astype(np.int16).reshape(r, r)
      encoded = features["image"].encode_example(hu)
      assert isinstance(encoded, bytes) and len(encoded) == hu.nbytes
      np.testing.assert_array_equal(features["image"].decode_example_np(encoded), hu)
