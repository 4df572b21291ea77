"""The classifier task's blood-map loss (`task.mask_loss`): BCE per cell, soft Dice per slice with blood, or both."""
import numpy as np
import pytest

from ich_jax.train import tasks


class _FixedHeads:
  """A model whose slice logits and 4×4 blood-map logits are given."""

  def __init__(self, mask_logits):
    self.mask_logits_value = np.asarray(mask_logits, np.float32)

  def heads(self, image):
    return {"logits": np.zeros((image.shape[0], 6), np.float32), "mask_logits": self.mask_logits_value}


def _batch():
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
  _, metrics = task.loss(_FixedHeads(cell_logits), _batch())
  np.testing.assert_allclose(float(metrics["mask_loss"]), _expected(kind, cell_logits), rtol=1e-5)


def test_dice_ignores_the_blood_map_of_slices_without_blood():
  rng = np.random.default_rng(1)
  cell_logits = rng.normal(size=(2, 4, 4)).astype(np.float32)
  other = cell_logits.copy()
  other[1] += 5.0                      # the blood-free slice now "sees" blood everywhere
  task = tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="dice")
  a = float(task.loss(_FixedHeads(cell_logits), _batch())[1]["mask_loss"])
  b = float(task.loss(_FixedHeads(other), _batch())[1]["mask_loss"])
  assert a == pytest.approx(b, rel=1e-6)
  # BCE does penalise it: this is what "dice+bce" keeps.
  task = tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="dice+bce")
  assert float(task.loss(_FixedHeads(other), _batch())[1]["mask_loss"]) > float(
      task.loss(_FixedHeads(cell_logits), _batch())[1]["mask_loss"]) + 0.5


def test_an_unknown_mask_loss_is_named():
  with pytest.raises(ValueError, match="task.mask_loss='focal'"):
    tasks.MultilabelClassification(mask_loss_weight=1.0, mask_loss="focal")
