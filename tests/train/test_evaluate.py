"""`ich_jax.train.evaluate`: checkpoint selection (the kept checkpoint of best mean validation Jaccard on slices
with blood, ties to the later one, recorded in selection.json; or the best of the validations run during
training, `ich_jax.train.selection`, kept through a resume), and what an evaluation adds to the predictions
and where it writes. The loop's restore and prediction stand in as hand-made masks per step, so nothing trains
or compiles (real runs evaluated: tests/train/test_segmentation.py, tests/train/test_ensemble.py; selection in
an experiment: tests/experiments/test_physionet_patch_unet.py)."""
import json
import re
import types

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from ich_jax.train import evaluate, loop, selection

# Validation slices 0–2 hold blood; slice 3 none. Per kept step, each slice's predicted mask.
REF = np.zeros((4, 2, 2), np.uint8)
REF[0, 0] = REF[1, :, 0] = REF[2, 1, 1] = 1
HALF = np.zeros((2, 2), np.uint8)
HALF[0, 0] = 1


def _predicted(step: int) -> np.ndarray:
  pred = REF.copy()
  if step == 1:
    pred[0] = pred[1] = HALF            # Jaccard 1/2, 1/2, 1: mean 2/3
  if step == 3:
    pred[3] = 1                         # perfect on the slices with blood; blood on the normal slice is not scored
  return pred


def _config(**dataset) -> ConfigDict:
  return ConfigDict({"dataset": {"name": "synthetic_ich", "config": "tiny", **dataset},
                     "eval": {"batch_size": 4}, "train": {"keep_checkpoints": 3}})


@pytest.fixture
def fake_loop(monkeypatch):
  """Steps 1–3 kept; restoring a step gives a state naming it; predicting gives that step's masks."""
  opened = []
  monkeypatch.setattr(loop, "input_module", lambda config: types.SimpleNamespace(
      open_split=lambda dataset, split: opened.append(split) or split))
  monkeypatch.setattr(loop, "checkpoint_steps", lambda config, workdir: [1, 2, 3])
  monkeypatch.setattr(loop, "restore_for_eval", lambda config, workdir, step: ("exp", {"step": step}, step))

  def predict_split(exp, state, source, *, batch_size, fields):
    assert source == "validation" and "mask" in fields
    return {"mask": REF, "pred_mask": _predicted(state["step"])}

  monkeypatch.setattr(loop, "predict_split", predict_split)
  return opened


def test_the_best_validation_jaccard_is_selected_ties_to_the_later_step(tmp_path, fake_loop, capsys):
  assert evaluate.selected_step(tmp_path) is None
  assert evaluate.select_checkpoint(_config(validation_split="validation"), tmp_path) == 3
  assert fake_loop == ["validation"]
  record = json.loads((tmp_path / evaluate.SELECTION).read_text())
  assert record["step"] == 3 and record["split"] == "validation"
  assert record["scores"] == pytest.approx({"1": 2 / 3, "2": 1.0, "3": 1.0})
  assert evaluate.selected_step(tmp_path) == 3
  assert f"{tmp_path.name}: checkpoint 3 (validation Jaccard 1.000" in capsys.readouterr().out


def test_without_blood_in_validation_the_newest_step_is_selected(tmp_path, fake_loop, monkeypatch):
  monkeypatch.setattr(loop, "predict_split", lambda *a, **k: {"mask": np.zeros_like(REF), "pred_mask": REF})
  assert evaluate.select_checkpoint(_config(validation_split="validation"), tmp_path) == 3
  scores = json.loads((tmp_path / evaluate.SELECTION).read_text())["scores"]
  assert sorted(scores) == ["1", "2", "3"] and all(np.isnan(v) for v in scores.values())


def test_selection_needs_a_validation_split_and_a_checkpoint(tmp_path, fake_loop, monkeypatch):
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: select_checkpoint (and train.select_every) needs "
                                                 "config dataset.validation_split")):
    evaluate.select_checkpoint(_config(), tmp_path)
  monkeypatch.setattr(loop, "checkpoint_steps", lambda config, workdir: [])
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in {tmp_path / 'checkpoints'} to select from"):
    evaluate.select_checkpoint(_config(validation_split="validation"), tmp_path)
  assert not (tmp_path / evaluate.SELECTION).exists()


# --- evaluate() on given predictions: what it adds and where it writes ---------------------------------------


def _evaluate_config(**eval_options) -> ConfigDict:
  config = _config(eval_split="test")
  config.eval.update(eval_options)
  config.model = ConfigDict({"name": "small_cnn", "options": {}})
  return config


def test_a_mask_target_other_than_blood_is_scored_by_mask_agreement(tmp_path, monkeypatch):
  brain = np.zeros((2, 4, 4), np.uint8)
  brain[:, 1:3, 1:3] = 1
  pred = brain.copy()
  pred[1, 0, 0] = 1                                  # slice 1: 4 of 5 predicted pixels right, Dice 8/9
  monkeypatch.setattr(loop, "input_module", lambda config: types.SimpleNamespace(open_split=lambda dataset, split: []))
  monkeypatch.setattr(loop, "predict_split", lambda *a, **k: {"brain": brain, "pred_mask": pred})
  exp = types.SimpleNamespace(task=types.SimpleNamespace(target="brain"))
  metrics = evaluate.evaluate(_evaluate_config(), tmp_path, exp=exp, state={}, step=5)
  assert metrics["reference"] == "brain" and metrics["dice"]["mean"] == pytest.approx((1 + 8 / 9) / 2)
  assert (metrics["step"], metrics["split"], metrics["dataset"]) == (5, "test", "synthetic_ich/tiny")
  assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 5
  assert (tmp_path / "report.md").read_text().startswith(f"# Evaluation of {tmp_path.name}, step 5\n")


@pytest.mark.parametrize("baseline", [True, False])
def test_blood_predictions_get_the_baseline_score_of_their_record(tmp_path, monkeypatch, baseline):
  source = [{"image": np.full((2, 2), float(i))} for i in range(4)]
  monkeypatch.setattr(loop, "input_module", lambda config: types.SimpleNamespace(
      open_split=lambda dataset, split: source))
  monkeypatch.setattr(loop, "predict_split", lambda *a, **k: {"record_index": np.array([3, 0, 2]),
                                                               "probabilities": np.zeros((3, 6))})
  monkeypatch.setattr(evaluate.baseline, "bright_fraction", lambda image: float(image.mean()) / 10)
  written = {}

  def write_evaluation(preds, workdir, eval_config, *, meta, title):
    written.update(preds=preds, workdir=workdir, meta=meta, title=title)
    return {"written": True}

  monkeypatch.setattr(evaluate.report, "write_evaluation", write_evaluation)
  exp = types.SimpleNamespace(task=types.SimpleNamespace())          # no `target`: hemorrhage masks
  assert evaluate.evaluate(_evaluate_config(baseline=baseline), tmp_path, exp=exp, state={}, step=7) == {
      "written": True}
  assert written["meta"] == {"step": 7, "split": "test", "dataset": "synthetic_ich/tiny",
                             "initial_weights": "from scratch (random initialisation)"}
  assert written["title"] == f"Evaluation of {tmp_path.name}, step 7" and written["workdir"] == tmp_path
  if baseline:
    np.testing.assert_allclose(written["preds"][evaluate.BASELINE_COLUMN], [0.3, 0.0, 0.2])
  else:
    assert evaluate.BASELINE_COLUMN not in written["preds"]


# --- Validation during training (config.train.select_every): BestCheckpoint, resumed ---------------------------

BAD = _predicted(1)                     # mean validation Jaccard 2/3; REF itself scores 1


class _Store:
  """Checkpointer stand-in: checkpoints per directory in memory, reopened as they were left."""

  dirs: dict = {}

  def __init__(self, directory, *, keep):
    assert keep is None                  # the tracker prunes its checkpoints itself
    self.steps = self.dirs.setdefault(str(directory), {})

  @property
  def all_steps(self):
    return sorted(self.steps)

  def save(self, step, state):
    assert step not in self.steps        # Orbax refuses to save a step twice
    self.steps[step] = state

  def delete(self, step):
    del self.steps[step]

  def close(self):
    pass


@pytest.fixture
def tracked(tmp_path, monkeypatch):
  """selection.BestCheckpoint validating every step of 4, a state {"step", "pred"} scored by its masks."""
  monkeypatch.setattr(_Store, "dirs", {})
  monkeypatch.setattr(selection.checkpoint, "Checkpointer", _Store)
  config = _config(validation_split="validation")
  config.train.select_every = 1

  def start(step, state=None):
    score = lambda state: selection.jaccard_on_blood({"mask": REF, "pred_mask": state["pred"]})
    return selection.BestCheckpoint(tmp_path, 1, score, state, start=step, total=4)

  def kept():
    return _Store(tmp_path / selection.BEST_CHECKPOINTS, keep=None).all_steps

  return config, start, kept


def test_the_best_validation_is_kept_through_a_resume(tmp_path, tracked):
  config, start, kept = tracked
  best = start(0)
  best.after_step(1, {"step": 1, "pred": BAD}, saved=None)
  best.after_step(2, {"step": 2, "pred": BAD}, saved=2)     # ties go to the later step
  assert kept() == [2]
  best.after_step(3, {"step": 3, "pred": REF}, saved=2)
  # The best (3) and, for a resume from the regular checkpoint at 2, the best up to 2.
  assert kept() == [2, 3]
  assert json.loads((tmp_path / selection.VALIDATION).read_text())["best"] == 3
  # Stopped here and resumed from step 2: step 3's validation and state are dropped and run again.
  best = start(2)
  assert kept() == [2] and selection.read_scores(tmp_path) == pytest.approx(
      {1: 2 / 3, 2: 2 / 3, 3: 1.0})
  best.after_step(3, {"step": 3, "pred": REF}, saved=2)
  best.after_step(4, {"step": 4, "pred": BAD}, saved=4)
  assert kept() == [3]                   # the best, older than the newest regular checkpoint
  assert evaluate.select_checkpoint(config, tmp_path) == 3
  record = json.loads((tmp_path / evaluate.SELECTION).read_text())
  assert record["checked"] == "every 1 steps"
  assert record["scores"] == pytest.approx({"1": 2 / 3, "2": 2 / 3, "3": 1.0, "4": 2 / 3})


def test_a_validation_missed_before_a_stop_runs_on_resume(tmp_path, tracked):
  config, start, kept = tracked
  best = start(0)
  best.after_step(1, {"step": 1, "pred": BAD}, saved=None)
  # Stopped after step 2's regular checkpoint, before its validation: the resumed run validates it first.
  start(2, {"step": 2, "pred": REF})
  assert selection.read_scores(tmp_path) == pytest.approx({1: 2 / 3, 2: 1.0}) and kept() == [2]
  # Selection reads the validations the loop ran, never the kept regular checkpoints.
  assert evaluate.select_checkpoint(config, tmp_path) == 2
  (tmp_path / selection.VALIDATION).unlink()
  with pytest.raises(FileNotFoundError, match="no validation during training to select from"):
    evaluate.select_checkpoint(config, tmp_path)


def test_a_step_kept_only_as_the_best_is_restored_from_there(tmp_path, monkeypatch):
  """Orbax itself: the best state of step 1 outlived the regular checkpoints (only step 2 kept)."""
  import jax.numpy as jnp

  from ich_jax.train import checkpoint

  for directory, step, value in (("checkpoints", 2, 2.0), (selection.BEST_CHECKPOINTS, 1, 1.0)):
    c = checkpoint.Checkpointer(tmp_path / directory, keep=None)
    c.save(step, {"w": jnp.full((3,), value)})
    c.close()
  abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
  monkeypatch.setattr(loop, "make_experiment", lambda config: types.SimpleNamespace(abstract_state=lambda: abstract))
  for step, value in ((1, 1.0), (2, 2.0), (None, 2.0)):
    _, state, got = loop.restore_for_eval(_config(), tmp_path, step)
    assert got == (step or 2) and np.asarray(state["w"]).tolist() == [value] * 3
