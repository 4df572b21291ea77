"""The classification task: the blood cells of a slice, the blood-map loss (`task.mask_loss`: BCE per cell, soft
Dice per slice with blood, or both) and seed 000 §2.1.5's saliency-supervision loss as a task option."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from ich_jax import models
from ich_jax.models import gradcam
from ich_jax.train import losses, tasks
from tests.models.fast_init import materialize


def test_coarse_mask_marks_cells_with_any_blood():
  mask = np.zeros((1, 8, 8), np.uint8)
  mask[0, 0, 5] = 3  # one subarachnoid pixel in the top-right 4×4 cell
  mask[0, 7, 0] = 1
  got = np.asarray(tasks.coarse_mask(jnp.asarray(mask), (2, 2)))
  np.testing.assert_array_equal(got[0], [[0, 1], [1, 0]])


# --- The blood-map loss ---------------------------------------------------------------------


class _FixedHeads:
  """A model whose slice logits and 4×4 blood-map logits are given."""

  def __init__(self, mask_logits):
    self.mask_logits_value = np.asarray(mask_logits, np.float32)

  def heads(self, image):
    return {"logits": np.zeros((image.shape[0], 6), np.float32), "mask_logits": self.mask_logits_value}


def _mask_batch():
  mask = np.zeros((2, 8, 8), np.uint8)
  mask[0, 0:2, 0:4] = 3        # slice 0: blood in cells (0, 0) and (0, 1) of the 4×4 grid
  labels = np.zeros((2, 6), np.float32)
  labels[0, [0, 3]] = 1
  return {"image": np.zeros((2, 8, 8, 3), np.float32), "labels": labels, "mask": mask}


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _expected(kind, cell_logits):
  target = np.zeros((2, 4, 4), np.float32)
  target[0, 0, 0:2] = 1
  p = _sigmoid(cell_logits)
  bce = np.mean(np.maximum(cell_logits, 0) - cell_logits * target + np.log1p(np.exp(-np.abs(cell_logits))))
  # Soft Dice (smooth 1) of slice 0 only: slice 1 has no blood and is not scored.
  dice = 1 - (2 * (p[0] * target[0]).sum() + 1) / (p[0].sum() + target[0].sum() + 1)
  return {"bce": bce, "dice": dice, "dice+bce": bce + dice}[kind]


@pytest.mark.parametrize("kind", ["bce", "dice", "dice+bce"])
def test_mask_loss_is_the_named_loss(kind):
  rng = np.random.default_rng(0)
  cell_logits = rng.normal(size=(2, 4, 4)).astype(np.float32)
  task = tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss=kind)
  _, metrics = task.loss(_FixedHeads(cell_logits), _mask_batch())
  np.testing.assert_allclose(float(metrics["mask_loss"]), _expected(kind, cell_logits), rtol=1e-5)


def test_dice_ignores_the_blood_map_of_slices_without_blood():
  rng = np.random.default_rng(1)
  cell_logits = rng.normal(size=(2, 4, 4)).astype(np.float32)
  other = cell_logits.copy()
  other[1] += 5.0                      # the blood-free slice now "sees" blood everywhere
  task = tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="dice")
  a = float(task.loss(_FixedHeads(cell_logits), _mask_batch())[1]["mask_loss"])
  b = float(task.loss(_FixedHeads(other), _mask_batch())[1]["mask_loss"])
  assert a == pytest.approx(b, rel=1e-6)
  # BCE does penalise it: this is what "dice+bce" keeps.
  task = tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="dice+bce")
  assert float(task.loss(_FixedHeads(other), _mask_batch())[1]["mask_loss"]) > float(
      task.loss(_FixedHeads(cell_logits), _mask_batch())[1]["mask_loss"]) + 0.5


def test_an_unknown_mask_loss_is_named():
  with pytest.raises(ValueError, match="task.mask_loss='focal'"):
    tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="focal")


# --- Saliency supervision ------------------------------------------------------------------


def _task(**options):
  return tasks.build(ConfigDict({"name": "multilabel_classification", "label_weights": (1, 0, 0, 0, 0, 0),
                                 **options}))


def _saliency_batch():
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
  model, batch = _model(), _saliency_batch()
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
    return loss, metrics["saliency_loss"], weak, cells, losses.saliency_loss(cam, cells), m_sah["saliency_loss"]

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
  model, batch = _model(), _saliency_batch()
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
