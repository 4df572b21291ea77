"""Seed 003's cascade plumbing: the stage-1 export of a trained CNN and seq_gru_1/2 through the shared trainer
(the export format and the series source: tests/data/test_stage_exports.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import sequence as sequence_config
from ich_jax.data import pipeline, slice_inputs, stage_exports, windows
from ich_jax.train import evaluate, export, loop, losses, tasks


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
  d = stage_exports.export_dir(workdir, "test")
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
    examples.append(slice_inputs.preprocess(slice_inputs.read_example(slices, record, offsets_of_recipe), config.data))
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
  assert not (stage_exports.export_dir(tmp_path / "seq1", "test") / "features.npy").exists()

  config2 = sequence_config.get_config("seq_gru_2,smoke")
  config2.dataset.exports = (str(cnn_dir), str(tmp_path / "seq1"))
  metrics = _train_and_evaluate(config2, tmp_path / "seq2")
  assert metrics["n_slices"] == n_test
  preds = np.load(tmp_path / "seq2" / "predictions.npz")
  assert preds["probabilities"].shape == (n_test, 6) and set(preds["series_id"]) == set(
      np.load(stage_exports.export_dir(cnn_dir, "test") / "series_id.npy"))
