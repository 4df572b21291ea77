"""Strong labels through the classification task: seed 000 §2.1.5's saliency-supervision loss as a task option."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from ich_jax import models
from ich_jax.models import gradcam
from ich_jax.train import tasks
from tests.models.fast_init import materialize


def _task(**options):
  return tasks.build(ConfigDict({"name": "multilabel_classification", "label_weights": (1, 0, 0, 0, 0, 0),
                                 **options}))


def _batch():
  """Four slices with a bright subdural patch (mask value 5) top right, four without blood."""
  rng = np.random.default_rng(0)
  image = rng.random((8, 16, 16, 3)).astype(np.float32)
  mask = np.zeros((8, 16, 16), np.uint8)
  mask[:4, 2:6, 10:14] = 5
  image[:4, 2:6, 10:14] += 1.0
  labels = np.zeros((8, 6), np.float32)
  labels[:4, [0, 5]] = 1
  return {"image": jnp.asarray(image), "labels": jnp.asarray(labels), "mask": jnp.asarray(mask)}


def _model():
  return materialize(lambda: models.build("small_cnn", num_classes=6, in_channels=3, rngs=nnx.Rngs(0),
                                          widths=(8, 16)))


def test_the_loss_is_bce_plus_the_weighted_dice_of_the_cam_against_the_mask():
  model, batch = _model(), _batch()
  model.eval()  # running statistics: the hand computation below sees the same activations
  graphdef, state = nnx.split(model)

  @jax.jit
  def compute(state):
    m = nnx.merge(graphdef, state)
    loss, metrics = _task(saliency_loss_weight=0.5).loss(m, batch)
    weak, _ = _task().loss(m, batch)
    _, cam = gradcam.logits_and_cam(m, m.features_map(batch["image"]), 0)
    cells = tasks.coarse_mask(batch["mask"], cam.shape[1:])
    # A subtype's CAM is scored against that subtype's pixels only: no subarachnoid blood here, nothing to score.
    _, m_sah = _task(saliency_loss_weight=1.0, saliency_class="subarachnoid").loss(m, batch)
    return loss, metrics["saliency_loss"], weak, cells, gradcam.saliency_loss(cam, cells), m_sah["saliency_loss"]

  loss, saliency, weak, cells, expected, sah = map(np.asarray, compute(state))
  assert cells[:4].sum() > 0 and cells[4:].sum() == 0
  assert 0.05 < expected < 1.0
  assert saliency == pytest.approx(expected, rel=1e-5)
  assert loss == pytest.approx(weak + 0.5 * expected, rel=1e-5)
  assert sah == 0.0
  assert _task(saliency_loss_weight=0.5).target_keys == ("labels", "mask") and _task().target_keys == ("labels",)
  with pytest.raises(ValueError, match="task.saliency_class='blood'"):
    _task(saliency_loss_weight=1.0, saliency_class="blood")


def test_the_saliency_term_trains_the_cam_onto_the_blood():
  model, batch = _model(), _batch()
  task = _task(saliency_loss_weight=1.0)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, rest, opt):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      loss, metrics = task.loss(m, batch)
      return loss, (metrics, nnx.state(m, nnx.Not(nnx.Param)))
    (_, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), rest, opt, metrics

  history = []
  for _ in range(30):
    params, rest, opt, metrics = step(params, rest, opt)
    history.append(float(metrics["saliency_loss"]))
  assert np.isfinite(history).all()
  assert history[-1] < 0.5 * history[0], history
