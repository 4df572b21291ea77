"""In-memory fake slice sources and `config.data` for the slice pipeline's tests (no TFDS, no download)."""
import numpy as np

from ich_jax.data import config_defaults, windows

LENGTHS = (5, 3, 7, 1, 6, 4, 2, 9)  # 37 slices in 8 series


def fake_source(series_lengths=LENGTHS, size=16, seed=0, constant=False, gaps=()):
  """A list of slice records in shuffled order, like TFDS's hashed keys.

  constant: slice s of series k is filled with HU 100*k + 10*s (identifies it).
  gaps: (series, slice) pairs left out of the source.
  """
  rng = np.random.default_rng(seed)
  records = []
  for k, n in enumerate(series_lengths):
    for s in range(n):
      if (k, s) in gaps:
        continue
      if constant:
        image = np.full((size, size), 100 * k + 10 * s, np.int16)
      else:
        image = rng.integers(-1000, 1500, (size, size)).astype(np.int16)
      mask = ((rng.random((size, size)) < 0.1) * rng.integers(1, 6)).astype(np.uint8)
      labels = np.zeros(6, np.float32)
      if mask.any():
        labels[0] = labels[mask.max()] = 1.0
      records.append({
          "image": image, "labels": labels, "mask": mask,
          "study_id": f"study{k // 2}".encode(), "series_id": f"1.2.3.{k}".encode(),
          "slice_index": np.int32(s), "z_position": np.float32(5.0 * s),
          "pixel_spacing": np.array([0.5, 0.5], np.float32), "slice_thickness": np.float32(5.0),
          "study_blood_ml": np.float32(k), "mimic": np.uint8(0),
      })
  order = rng.permutation(len(records))
  return [records[i] for i in order]


def data_cfg(image_size=16, recipe=windows.RSNA_3WINDOW, augment=True, **kw):
  c = config_defaults.default_data_config()
  c.image_size = image_size
  c.recipe = tuple(tuple(t) for t in recipe)
  c.read_threads = 2
  c.prefetch_batches = 4
  c.augment.enabled = augment
  c.augment.hflip = True
  c.update(kw)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def record_stream(it, n_batches):
  return np.concatenate([b["record_index"] for b in take(it, n_batches)])
