"""Stage-1 exports: writing and reading them, the series source over one or several, folds, and the series
pipeline's windows, sharding and resumption."""
import json

import numpy as np
import pytest

from ich_jax.data import folds, stage_exports


# --- A hand-made export: slice s of series k carries its identity in its features ---------

LENGTHS = (5, 2, 9, 7)


def _label(k, s):
  return np.array([(k + s) % 2, s % 3 == 0, 0, k == 1, 0, s == 4], np.float32)


def _rows(lengths=LENGTHS, seed=0, drop=()):
  """Per-slice rows in shuffled order; z falls as slice_index rises (feet-first numbering)."""
  rows = {k: [] for k in ("series_id", "study_id", "slice_index", "z_position", "labels", "probabilities",
                          "features", "study_blood_ml")}
  for k, n in enumerate(lengths):
    for s in range(n):
      if (k, s) in drop:
        continue
      z = 100.0 - 5.0 * s - (2.5 if s >= 3 else 0.0)  # one uneven gap
      rows["series_id"].append(f"1.2.{k}".encode())
      rows["study_id"].append(f"study{k // 2}".encode())
      rows["slice_index"].append(s)
      rows["z_position"].append(z)
      rows["labels"].append(_label(k, s))
      rows["probabilities"].append(np.full(6, 0.1 * k, np.float32))
      rows["features"].append(np.array([k, s, z], np.float32))
      rows["study_blood_ml"].append(float(k))
  order = np.random.default_rng(seed).permutation(len(rows["series_id"]))
  return {key: np.asarray(v)[order] for key, v in rows.items()}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
  root = tmp_path_factory.mktemp("handmade")
  stage_exports.write_export(stage_exports.export_dir(root / "a", "train"), _rows())
  b = {k: v for k, v in _rows(seed=1).items() if k != "features"}
  b["probabilities"] = 1 - b["probabilities"]
  stage_exports.write_export(stage_exports.export_dir(root / "b", "train"), b)
  return root


def _check_slices(ex, k_expected=None):
  """Every valid slice's labels, z and gap belong to the slice its features name."""
  valid = ex["slice_valid"] if "slice_valid" in ex else np.ones(len(ex["labels"]), bool)
  k, s, z = ex["features"][valid].T
  k = k.astype(int)
  assert (k == k[0]).all() and (k_expected is None or k[0] == k_expected)
  for i in range(valid.sum()):
    np.testing.assert_array_equal(ex["labels"][i], _label(k[i], int(s[i])))
  np.testing.assert_array_equal(ex["z_position"][valid], z)
  assert (np.diff(z) > 0).all()                         # z order
  np.testing.assert_array_equal(np.diff(s), -1)          # consecutive slices (a window)
  return s.astype(int)


def test_source_gives_series_in_z_order_with_mask_and_labels(handmade):
  src = stage_exports.SeriesFeatureSource([handmade / "a", handmade / "b"], "train")
  assert len(src) == len(LENGTHS) and src.max_length == max(LENGTHS)
  assert src.feature_dim == 3 and src.num_models == 2
  for k, n in enumerate(LENGTHS):
    ex = src[k]
    assert ex["series_id"] == f"1.2.{k}" and ex["study_id"] == f"study{k // 2}"
    assert ex["features"].shape == (n, 1, 3) and ex["predictions"].shape == (n, 2, 6)
    s = _check_slices({**ex, "features": ex["features"][:, 0]}, k)
    np.testing.assert_array_equal(s, np.arange(n)[::-1])
    np.testing.assert_allclose(ex["predictions"][:, 0], 0.1 * k, rtol=1e-6)
    np.testing.assert_allclose(ex["predictions"][:, 1], 1 - 0.1 * k, rtol=1e-6)
    # The gap to the next slice (the last repeats the one before), from the z positions.
    expected = np.diff(ex["z_position"])
    np.testing.assert_allclose(ex["gap"], np.r_[expected, expected[-1:]] if n > 1 else [0.0])
    np.testing.assert_array_equal(ex["study_blood_ml"], k)
    fitted = stage_exports.fit_length(ex, 8)
    assert fitted["slice_valid"].tolist() == [True] * min(n, 8) + [False] * (8 - min(n, 8))
    assert not fitted["labels"][min(n, 8):].any() and not fitted["features"][min(n, 8):].any()

  batches = list(stage_exports.eval_batches(src, stage_exports.default_data_config(), batch_size=3))
  assert len(batches) == 2 and batches[0]["labels"].shape == (3, max(LENGTHS), 6)
  valid = np.concatenate([b["valid"] for b in batches])
  counts = np.concatenate([b["slice_valid"].sum(1) for b in batches])[valid]
  np.testing.assert_array_equal(counts, LENGTHS)


def test_mismatched_exports_and_folds(handmade, tmp_path):
  stage_exports.write_export(stage_exports.export_dir(tmp_path / "c", "train"), _rows(drop={(2, 4)}))
  with pytest.raises(ValueError, match="differ in offsets"):
    stage_exports.SeriesFeatureSource([handmade / "a", tmp_path / "c"], "train")
  with pytest.raises(FileNotFoundError, match="export_features"):
    stage_exports.SeriesFeatureSource([handmade / "a"], "test")
  with pytest.raises(ValueError, match="appears twice"):
    rows = _rows()
    stage_exports.write_export(tmp_path / "dup", {k: np.r_[v, v[:1]] for k, v in rows.items()})
  # Folds by study: a study's series stay together; fold k and the rest partition the split.
  held_in = stage_exports.SeriesFeatureSource([handmade / "a"], "train[fold!=1/2]")
  held_out = stage_exports.SeriesFeatureSource([handmade / "a"], "train[fold=1/2]")
  assert sorted([*held_in.series_id, *held_out.series_id]) == [f"1.2.{k}" for k in range(len(LENGTHS))]
  assert not set(held_in.study_id) & set(held_out.study_id)
  assert held_out.max_length == max(held_out.lengths)
  with pytest.raises(ValueError, match="fold 2 of 2 is not a fold"):
    folds.parse_split("train[fold=2/2]")


def _data_cfg(length=4):
  c = stage_exports.default_data_config()
  c.train_length = length
  c.read_threads = 2
  return c


def test_random_windows_keep_labels_with_their_slices(handmade):
  src = stage_exports.SeriesFeatureSource([handmade / "a"], "train")
  it = stage_exports.train_iterator(src, _data_cfg(4), global_batch_size=4, seed=3)
  starts = {k: set() for k in range(len(LENGTHS))}
  for _ in range(12):
    batch = next(it)
    assert batch["features"].shape == (4, 4, 1, 3) and batch["slice_valid"].shape == (4, 4)
    for row in range(4):
      ex = {key: batch[key][row] for key in ("labels", "z_position", "slice_valid")}
      ex["features"] = batch["features"][row, :, 0]
      k = int(batch["record_index"][row])
      s = _check_slices(ex, k)
      assert len(s) == min(4, LENGTHS[k])
      starts[k].add(int(s[0]))
      assert not batch["labels"][row][~ex["slice_valid"]].any()
  assert len(starts[2]) > 2  # the 9-slice series is cut at different places


def test_series_iterator_shards_and_resumes_exactly(handmade):
  src = stage_exports.SeriesFeatureSource([handmade / "a", handmade / "b"], "train")
  cfg = _data_cfg(3)
  one = stage_exports.train_iterator(src, cfg, global_batch_size=4, seed=0)
  halves = [stage_exports.train_iterator(src, cfg, global_batch_size=4, seed=0, process_index=p,
                                         process_count=2)
            for p in range(2)]
  for _ in range(3):
    whole, parts = next(one), [next(h) for h in halves]
    for key in ("record_index", "features", "labels", "slice_valid"):
      merged = np.empty_like(whole[key])
      merged[0::2], merged[1::2] = parts[0][key], parts[1][key]  # process p takes stream positions p, p+2
      np.testing.assert_array_equal(merged, whole[key], err_msg=key)

  it = stage_exports.train_iterator(src, cfg, global_batch_size=4, seed=0)
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  fresh = stage_exports.train_iterator(src, cfg, global_batch_size=4, seed=0)
  fresh.set_state(state)
  for a, b in zip(expected, [next(fresh) for _ in range(3)]):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
