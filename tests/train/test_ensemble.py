"""Seed 000's weighted ensemble through the shared trainer: base segmentation maps exported once, joined back to
their slices, and the weight model trained on them with a soft Dice via configs/ensemble.py:smoke."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ensemble as ensemble_config
from configs import segmentation as seg_config
from ich_jax.data import base_maps, pipeline, slice_inputs, stage_exports, windows
from ich_jax.train import evaluate, export, loop, tasks


# --- The loss and predictions on hand-made maps ------------------------------------------


def _square(size, lo, hi):
  m = np.zeros((size, size), np.float32)
  m[lo:hi, lo:hi] = 1
  return m


def _fixed(weights):
  return lambda x: jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (x.shape[0], len(weights)))


def _batch(*maps, mask):
  return {"maps": jnp.asarray(np.stack(maps, -1)[None]), "image": jnp.zeros((1,) + mask.shape + (3,)),
          "mask": jnp.asarray(mask[None].astype(np.uint8))}


def test_soft_dice_is_zero_for_a_perfect_map_and_near_one_for_a_disjoint_one():
  task = tasks.build(ensemble_config.get_config("smoke").task)
  target = _square(16, 2, 6)                                      # 16 blood pixels
  disjoint = _square(16, 10, 14)                                  # 16 pixels elsewhere
  perfect, m = task.loss(_fixed([0.3, 0.7]), _batch(target, target, mask=target))
  assert float(perfect) == pytest.approx(0.0, abs=1e-6) and float(m["hard_dice"]) == pytest.approx(1.0)
  far, m = task.loss(_fixed([0.3, 0.7]), _batch(disjoint, disjoint, mask=target))
  # 1 − (0 + 1) / (16 + 16 + 1): only the smoothing keeps it below 1.
  assert float(far) == pytest.approx(1 - 1 / 33, rel=1e-6) and float(m["hard_dice"]) == pytest.approx(0.0, abs=1e-6)

  # The weights decide: all on the right model is perfect; half and half gives 0.5 on both squares,
  # soft Dice (2·8 + 1) / (16 + 16 + 1), and at the paper's threshold (≥ 0.5) both squares are blood.
  batch = _batch(target, disjoint, mask=target)
  assert float(task.loss(_fixed([1.0, 0.0]), batch)[0]) == pytest.approx(0.0, abs=1e-6)
  half, m = task.loss(_fixed([0.5, 0.5]), batch)
  assert float(half) == pytest.approx(1 - 17 / 33, rel=1e-6)
  assert float(m["hard_dice"]) == pytest.approx(2 * 16 / (32 + 16), rel=1e-6)
  assert float(m["weight_0"]) == pytest.approx(0.5)

  # Why soft Dice: its gradient moves the weights towards the right model; the thresholded Dice is flat.
  def soft(theta):
    return task.loss(lambda x: jax.nn.softmax(theta)[None], batch)[0]

  grad = np.asarray(jax.grad(soft)(jnp.zeros(2)))
  assert grad[0] < 0 < grad[1]

  # Predictions: the slice's probability is the weighted map's most probable pixel, in all six columns.
  maps = np.stack([target * 0.9, disjoint * 0.6], -1)
  out = task.predict(_fixed([0.25, 0.75]), {"maps": jnp.asarray(maps[None]), "image": batch["image"]})
  np.testing.assert_allclose(out["probabilities"], np.full((1, 6), 0.45), rtol=1e-6)
  np.testing.assert_array_equal(out["pred_mask"][0], np.zeros((16, 16), np.uint8))  # 0.225 and 0.45 < 0.5
  np.testing.assert_allclose(out["ensemble_weights"], [[0.25, 0.75]])


def test_with_image_the_weight_model_reads_maps_then_image_and_must_give_one_weight_per_map():
  config = ensemble_config.get_config("smoke:image")
  assert config.model.options.num_models == 2
  task = tasks.build(config.task)
  mask = _square(8, 1, 3)
  batch = _batch(mask, mask, mask=mask)
  seen = []
  task.loss(lambda x: seen.append(x.shape) or jnp.full((1, 2), 0.5), batch)
  assert seen == [(1, 8, 8, 2 + 3)]
  with pytest.raises(ValueError, match="num_models = 2"):
    task.loss(lambda x: jnp.full((1, 5), 0.2), batch)


# --- The real path: two base segmentation runs, exported, then the weight model -------------


@pytest.fixture(scope="module")
def rbg_prng_module():
  """JAX's "rbg" PRNG while this module's runs initialise their models (see test_segmentation's rbg_prng:
  eager initialisation compiles a kernel per weight shape, a fifth as slow with rbg)."""
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", old)


@pytest.fixture(scope="module")
def bases(tiny_data_dir, tmp_path_factory, rbg_prng_module):
  """Two base segmentation smoke runs (seeds 0 and 1), one step each, exported for the train and test splits."""
  runs = []
  for seed in (0, 1):
    config = seg_config.get_config("inception_unet:smoke")
    config.seed = seed
    config.dataset.data_dir = tiny_data_dir
    config.train.num_steps = 1
    config.train.checkpoint_every = 1
    workdir = tmp_path_factory.mktemp(f"seg_{seed}")
    loop.train(config, workdir)
    assert [d.name for d in export.export_features(config, workdir)] == ["train", "test"]
    runs.append((config, workdir))
  return runs


def test_exported_maps_are_the_base_models_predictions(bases):
  config, workdir = bases[0]
  d = stage_exports.export_dir(workdir, "test")
  maps = np.load(d / "maps.npy", mmap_mode="r")
  record_index = np.load(d / "record_index.npy")
  slices = pipeline.open_split(config.dataset, "test")
  assert maps.dtype == np.float16 and maps.shape == (len(slices), 32, 32)
  assert json.loads((d / "meta.json").read_text())["map_size"] == [32, 32]
  assert sorted(record_index) == list(range(len(slices)))

  exp, state, _ = loop.restore_for_eval(config, workdir)
  model = nnx.merge(exp.graphdef_eval, state["params"], state["model_state"])
  rows = [0, len(maps) // 2, len(maps) - 1]
  offsets = windows.recipe_offsets(config.data.recipe)
  examples = [slice_inputs.preprocess(slice_inputs.read_example(slices, int(record_index[r]), offsets), config.data)
              for r in rows]
  direct = np.asarray(jax.nn.sigmoid(model(jnp.asarray(np.stack([e["image"] for e in examples])))))[..., 0]
  assert direct.std() > 1e-3  # maps that differ between pixels and slices, so a misplaced row would show
  np.testing.assert_allclose(maps[rows].astype(np.float32), direct, atol=2e-3)
  # The export's ids are the recomputed slices' (rows sorted by series, then z).
  sid = np.load(d / "series_id.npy")[np.searchsorted(np.load(d / "offsets.npy"), rows, side="right") - 1]
  assert [e["series_id"].item().decode() for e in examples] == list(sid)
  np.testing.assert_array_equal(np.load(d / "slice_index.npy")[rows], [e["slice_index"] for e in examples])

  # The ensemble's source hands each slice both runs' maps, in the order of dataset.exports.
  ens = ensemble_config.get_config("smoke")
  ens.dataset.data_dir = config.dataset.data_dir
  ens.dataset.exports = tuple(str(w) for _, w in bases)
  source = base_maps.open_split(ens.dataset, "test")
  other = np.load(stage_exports.export_dir(bases[1][1], "test") / "maps.npy", mmap_mode="r")
  for r in rows:
    example = base_maps.load(source, ens.data, int(record_index[r]))
    np.testing.assert_array_equal(example["maps"], np.stack([maps[r], other[r]], -1).astype(np.float32))
    assert example["mask"].shape == (32, 32)
  ens.data.image_size = 64
  with pytest.raises(ValueError, match="image_size=64"):
    base_maps.eval_batches(source, ens.data, batch_size=4)


def test_weight_model_trains_and_evaluates_through_the_shared_loop(bases, tmp_path):
  config = ensemble_config.get_config("smoke")
  config.dataset.data_dir = bases[0][0].dataset.data_dir
  config.dataset.exports = tuple(str(w) for _, w in bases)
  exp, state = loop.train(config, tmp_path)
  assert int(state["step"]) == 2
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and 0 < r["loss"] <= 1 for r in rows)
  assert all(r["weight_0"] + r["weight_1"] == pytest.approx(1.0, rel=1e-5) for r in rows)

  metrics = evaluate.evaluate(config, tmp_path, exp=exp, state=state, step=2)
  n_test = len(pipeline.open_split(config.dataset, "test"))
  assert metrics["n_slices"] == n_test and 0 <= metrics["slice"]["any"]["auc"] <= 1
  dice = metrics["volumes"]["dice"]["slices_with_blood"]
  assert dice["n_slices"] > 0 and 0 <= dice["dice"] <= 1
  assert (tmp_path / "report.md").is_file() and (tmp_path / "metrics.json").is_file()
  preds = np.load(tmp_path / "predictions.npz")
  assert preds["pred_mask"].shape == preds["mask"].shape == (n_test, 32, 32) and "image" not in preds
  np.testing.assert_allclose(preds["ensemble_weights"].sum(1), 1.0, rtol=1e-5)
