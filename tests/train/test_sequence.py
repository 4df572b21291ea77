"""Seed 003's cascade plumbing: stage-1 export, the series source, and seq_gru_1/2 through the shared trainer."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import sequence as sequence_config
from ich_jax.data import folds, pipeline, series, windows
from ich_jax.train import evaluate, export, loop, losses, optimizer, tasks


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
  series.write_export(series.export_dir(root / "a", "train"), _rows())
  b = {k: v for k, v in _rows(seed=1).items() if k != "features"}
  b["probabilities"] = 1 - b["probabilities"]
  series.write_export(series.export_dir(root / "b", "train"), b)
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
  src = series.SeriesFeatureSource([handmade / "a", handmade / "b"], "train")
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
    fitted = series.fit_length(ex, 8)
    assert fitted["slice_valid"].tolist() == [True] * min(n, 8) + [False] * (8 - min(n, 8))
    assert not fitted["labels"][min(n, 8):].any() and not fitted["features"][min(n, 8):].any()

  batches = list(series.eval_batches(src, series.default_data_config(), batch_size=3))
  assert len(batches) == 2 and batches[0]["labels"].shape == (3, max(LENGTHS), 6)
  valid = np.concatenate([b["valid"] for b in batches])
  counts = np.concatenate([b["slice_valid"].sum(1) for b in batches])[valid]
  np.testing.assert_array_equal(counts, LENGTHS)


def test_mismatched_exports_and_folds(handmade, tmp_path):
  series.write_export(series.export_dir(tmp_path / "c", "train"), _rows(drop={(2, 4)}))
  with pytest.raises(ValueError, match="differ in offsets"):
    series.SeriesFeatureSource([handmade / "a", tmp_path / "c"], "train")
  with pytest.raises(FileNotFoundError, match="export_features"):
    series.SeriesFeatureSource([handmade / "a"], "test")
  with pytest.raises(ValueError, match="appears twice"):
    rows = _rows()
    series.write_export(tmp_path / "dup", {k: np.r_[v, v[:1]] for k, v in rows.items()})
  # Folds by study: a study's series stay together; fold k and the rest partition the split.
  held_in = series.SeriesFeatureSource([handmade / "a"], "train[fold!=1/2]")
  held_out = series.SeriesFeatureSource([handmade / "a"], "train[fold=1/2]")
  assert sorted([*held_in.series_id, *held_out.series_id]) == [f"1.2.{k}" for k in range(len(LENGTHS))]
  assert not set(held_in.study_id) & set(held_out.study_id)
  assert held_out.max_length == max(held_out.lengths)
  with pytest.raises(ValueError, match="fold 2 of 2 is not a fold"):
    folds.parse_split("train[fold=2/2]")


def _data_cfg(length=4):
  c = series.default_data_config()
  c.train_length = length
  c.read_threads = 2
  return c


def test_random_windows_keep_labels_with_their_slices(handmade):
  src = series.SeriesFeatureSource([handmade / "a"], "train")
  it = series.train_iterator(src, _data_cfg(4), global_batch_size=4, seed=3)
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
  src = series.SeriesFeatureSource([handmade / "a", handmade / "b"], "train")
  cfg = _data_cfg(3)
  one = series.train_iterator(src, cfg, global_batch_size=4, seed=0)
  halves = [series.train_iterator(src, cfg, global_batch_size=4, seed=0, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(3):
    whole, parts = next(one), [next(h) for h in halves]
    for key in ("record_index", "features", "labels", "slice_valid"):
      merged = np.empty_like(whole[key])
      merged[0::2], merged[1::2] = parts[0][key], parts[1][key]  # process p takes stream positions p, p+2
      np.testing.assert_array_equal(merged, whole[key], err_msg=key)

  it = series.train_iterator(src, cfg, global_batch_size=4, seed=0)
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  fresh = series.train_iterator(src, cfg, global_batch_size=4, seed=0)
  fresh.set_state(state)
  for a, b in zip(expected, [next(fresh) for _ in range(3)]):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_step_schedule_at_fractions_of_the_run():
  cfg = sequence_config.get_config("seq_gru_1").optimizer
  lr = optimizer.schedule(cfg, 40)  # seed 003: ×0.1 at epochs 20 and 30 of 40
  assert [float(lr(s)) for s in (19, 20, 29, 30, 39)] == pytest.approx([4e-4, 4e-5, 4e-5, 4e-6, 4e-6])


def test_sequence_loss_ignores_padded_slices():
  from tests.models.fast_init import materialize
  from ich_jax.models.sequence import SeqGRU1

  task = tasks.build(sequence_config.get_config("seq_gru_1,smoke").task)
  model = materialize(lambda: SeqGRU1(num_classes=6, in_channels=3, rngs=nnx.Rngs(0), widths=(4,), hidden=3),
                      noise=0.5)
  model.eval()
  rng = np.random.default_rng(0)
  valid = np.arange(5)[None] < np.array([[5], [2]])
  batch = {"features": rng.normal(size=(2, 5, 1, 3)).astype(np.float32),
           "labels": rng.integers(0, 2, (2, 5, 6)).astype(np.float32), "slice_valid": valid}
  garbage = {k: np.where(valid.reshape(valid.shape + (1,) * (v.ndim - 2)), v, 7.0).astype(np.float32)
             if k != "slice_valid" else v for k, v in batch.items()}


  @nnx.jit  # one compilation for the three GRU passes
  def run(model, batch, garbage):
    return (task.loss(model, batch)[0], task.loss(model, garbage)[0],
            model(batch["features"], batch["slice_valid"]))

  loss, loss_garbage, logits = run(model, batch, garbage)
  assert float(loss) == pytest.approx(float(loss_garbage), rel=1e-6)
  per_slice = np.asarray(losses.weighted_bce(jnp.asarray(logits), jnp.asarray(batch["labels"]),
                                             jnp.array(task.label_weights)))
  assert float(loss) == pytest.approx(per_slice[valid].mean(), rel=1e-5)


# --- The real path: a small_cnn trained and exported, then both sequence models ----------


@pytest.fixture(scope="module")
def stage1(tiny_data_dir, tmp_path_factory):
  from configs import quickstart

  config = quickstart.get_config("smoke")
  config.dataset.data_dir = tiny_data_dir
  config.train.num_steps = 1
  config.train.checkpoint_every = 1
  workdir = tmp_path_factory.mktemp("stage1")
  loop.train(config, workdir)
  written = export.export_features(config, workdir)
  assert [d.name for d in written] == ["train", "test"]
  return config, workdir


def test_export_holds_the_models_pooled_features(stage1):
  config, workdir = stage1
  d = series.export_dir(workdir, "test")
  arrays = {k: np.load(d / f"{k}.npy") for k in ("features", "probabilities", "labels", "z_position",
                                                  "slice_index", "series_id", "offsets")}
  slices = pipeline.open_split(config.dataset, "test")
  assert len(arrays["labels"]) == len(slices) and json.loads((d / "meta.json").read_text())["num_slices"] == len(slices)
  offsets = arrays["offsets"]
  for r in range(len(offsets) - 1):
    assert (np.diff(arrays["z_position"][offsets[r]:offsets[r + 1]]) > 0).all()

  exp, state, _ = loop.restore_for_eval(config, workdir)
  model = nnx.merge(exp.graphdef_eval, state["params"], state["model_state"])
  rows = [0, offsets[1] + 3, len(arrays["labels"]) - 1]
  offsets_of_recipe = windows.recipe_offsets(config.data.recipe)
  examples = []
  for row in rows:
    series_row = np.searchsorted(offsets, row, side="right") - 1
    index = slices.index[arrays["series_id"][series_row].encode()]
    record = int(index[1][np.searchsorted(index[0], arrays["slice_index"][row])])
    examples.append(pipeline.preprocess(pipeline.read_example(slices, record, offsets_of_recipe), config.data))
  images = jnp.asarray(np.stack([e["image"] for e in examples]))
  direct = np.asarray(model.pooled(model.features_map(images)))
  np.testing.assert_allclose(arrays["features"][rows], direct, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(arrays["probabilities"][rows], np.asarray(jax.nn.sigmoid(model(images))),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(arrays["labels"][rows], np.stack([e["labels"] for e in examples]))
  np.testing.assert_array_equal(arrays["z_position"][rows], [e["z_position"] for e in examples])


def _train_and_evaluate(config, workdir):
  exp, state = loop.train(config, workdir)
  losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == config.train.num_steps and np.isfinite(losses).all()
  return evaluate.evaluate(config, workdir, exp=exp, state=state, step=config.train.num_steps)


def test_seq_gru_1_and_2_train_and_evaluate_through_the_shared_loop(stage1, tmp_path):
  cnn_config, cnn_dir = stage1
  n_test = len(pipeline.open_split(cnn_config.dataset, "test"))

  config1 = sequence_config.get_config("seq_gru_1,smoke")
  config1.dataset.exports = (str(cnn_dir),)
  metrics = _train_and_evaluate(config1, tmp_path / "seq1")
  assert metrics["n_slices"] == n_test and 0.0 <= metrics["slice"]["any"]["auc"] <= 1.0
  assert "scan" in metrics and metrics["n_scans"] > 0
  export.export_features(config1, tmp_path / "seq1")  # model 1's predictions: a stage for model 2
  assert not (series.export_dir(tmp_path / "seq1", "test") / "features.npy").exists()

  config2 = sequence_config.get_config("seq_gru_2,smoke")
  config2.dataset.exports = (str(cnn_dir), str(tmp_path / "seq1"))
  metrics = _train_and_evaluate(config2, tmp_path / "seq2")
  assert metrics["n_slices"] == n_test
  preds = np.load(tmp_path / "seq2" / "predictions.npz")
  assert preds["probabilities"].shape == (n_test, 6) and set(preds["series_id"]) == set(
      np.load(series.export_dir(cnn_dir, "test") / "series_id.npy"))
