"""Seed 001's detection task in the shared loop: targets, one compile for every batch, 8 devices = 1, overfitting
phantom stacks, and `launch.py` on the smoke config writing Table 2, the FROC and the volume table."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hybrid_maskrcnn
from ich_jax import LABELS
from ich_jax.data import instances, pipeline, slice_inputs, slice_plan
from ich_jax.models import boxes
from ich_jax.train import detection, loop, sharding
from tests.conftest import ROOT

IPH, SDH, EDH = LABELS.index("intraparenchymal"), LABELS.index("subdural"), LABELS.index("epidural")


def test_mask_targets_are_the_matched_instance_cropped_at_the_roi():
  imap = np.zeros((16, 16), np.uint8)
  imap[4:8, 2:10] = 1          # instance 1: rows 4–7, columns 2–9
  imap[10:14, 10:14] = 2       # instance 2
  rois = jnp.array([[[4.0, 2.0, 8.0, 10.0], [4.0, 2.0, 8.0, 18.0], [10.0, 10.0, 14.0, 14.0]]])
  gt_index = jnp.array([[0, 0, 0]])
  t = np.asarray(detection.Detection._mask_targets(jnp.asarray(imap)[None], rois, gt_index, 4, 2))[0]
  assert t.shape == (3, 4, 4)
  assert t[0].all()                                  # the ROI is the instance's box
  np.testing.assert_array_equal(t[1], [[1, 1, 0, 0]] * 4)   # twice as wide: the left half
  assert not t[2].any()                              # matched to instance 1, which is not there
  t2 = np.asarray(detection.Detection._mask_targets(jnp.asarray(imap)[None], rois, jnp.array([[1, 1, 1]]), 4, 2))[0]
  assert t2[2].all() and not t2[0].any()


def test_paste_masks_fill_their_boxes_and_nothing_else():
  masks = jnp.ones((2, 7, 7))
  bx = jnp.array([[2.0, 3.0, 6.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
  pasted = np.asarray(detection.paste_masks(masks, bx, (8, 8)))
  want = np.zeros((8, 8))
  want[2:6, 3:5] = 1
  np.testing.assert_allclose(pasted[0], want, atol=1e-6)
  assert not pasted[1].any()
  # A left-to-right ramp on the mask stays a ramp across the box's pixels.
  ramp = jnp.tile(jnp.linspace(0, 1, 4), (4, 1))[None]
  row = np.asarray(detection.paste_masks(ramp, jnp.array([[0.0, 0.0, 4.0, 4.0]]), (4, 4)))[0, 0]
  np.testing.assert_allclose(row, np.linspace(0, 1, 4), atol=1e-6)


def test_label_map_and_slice_probabilities_follow_the_class_groups():
  task = detection.Detection(classes=detection.PAPER_CLASSES)
  pasted = np.zeros((1, 3, 4, 4), np.float32)
  pasted[0, 0, :2] = 0.9      # IPH detection, top half
  pasted[0, 1, 1:] = 0.8      # EDH/SDH detection, overlapping row 1; higher score wins there
  pasted[0, 2, 3] = 0.9       # a low-score SAH detection: no pixels
  scores = jnp.array([[0.7, 0.9, 0.3]])
  classes = jnp.array([[0, 1, 2]])
  lm = np.asarray(task.label_map(jnp.asarray(pasted), scores, classes))[0]
  np.testing.assert_array_equal(lm, [[IPH] * 4, [EDH] * 4, [EDH] * 4, [EDH] * 4])
  probs = np.asarray(task.slice_probabilities(jnp.array([[0.2, 0.6, 0.1, 0.4]])))[0]
  want = {"any": 0.6, "epidural": 0.6, "intraparenchymal": 0.2, "intraventricular": 0.4, "subarachnoid": 0.1,
          "subdural": 0.6}
  np.testing.assert_allclose(probs, [want[n] for n in LABELS], atol=1e-7)
  with pytest.raises(ValueError, match="3 classes .* but the model has 4"):
    detection.Detection(classes=detection.PAPER_CLASSES[:3])._check_model(
        type("M", (), {"num_classes": 4})(), jnp.zeros((1, 64, 64, 5)))


def _smoke(tiny_data_dir, **changes):
  c = hybrid_maskrcnn.get_config("smoke")
  c.dataset.data_dir = tiny_data_dir
  c.data.augment.enabled = False
  for key, value in changes.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def _batch(counts, size=64, seed=0):
  """Random 5-channel images with `counts[i]` square bleeds of alternating subtypes on slice i."""
  rng = np.random.default_rng(seed)
  out = {k: [] for k in instances.FIELDS + ("image",)}
  for n in counts:
    mask = np.zeros((size, size), np.uint8)
    for j in range(n):
      y, x = 4 + 14 * (j // 4), 4 + 14 * (j % 4)
      mask[y:y + 8 + j, x:x + 8] = (IPH, SDH)[j % 2]
    for k, v in instances.from_mask(mask, 4).items():
      out[k].append(v)
    out["image"].append(rng.normal(size=(size, size, 5)).astype(np.float32) + 2 * (mask > 0)[..., None])
  return {k: np.stack(v) for k, v in out.items()}


def test_one_compiled_step_for_every_ground_truth_count_and_eight_devices_equal_one(tiny_data_dir):
  config = _smoke(tiny_data_dir, optimizer__schedule="constant")
  exp = loop.make_experiment(config)
  assert exp.mesh.devices.size == 8
  step = loop.make_train_step(exp)
  state = exp.init_state()
  first = _batch([0, 1, 2, 3, 4, 1, 0, 2], seed=0)
  compiles = []

  def listener(event, seconds, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state, metrics = step(state, sharding.put_batch(first, sharding.batch_sharding(exp.mesh), exp.train_keys))
    eight = jax.device_get((state["params"], metrics))
    assert len(compiles) == 1
    for counts in ([1] * 8, [4, 0, 0, 0, 0, 0, 0, 0]):
      state, m = step(state, sharding.put_batch(_batch(counts, seed=1), sharding.batch_sharding(exp.mesh),
                                                exp.train_keys))
      assert np.isfinite(float(m["loss"]))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiles) == 1     # no second compile for other numbers of ground-truth boxes

  one = dataclasses.replace(exp, mesh=jax.make_mesh((1,), (sharding.DATA_AXIS,), devices=jax.devices()[:1],
                                                    axis_types=(jax.sharding.AxisType.Auto,)))
  state1, metrics1 = loop.make_train_step(one)(one.init_state(), sharding.put_batch(
      first, sharding.batch_sharding(one.mesh), one.train_keys))
  params1, metrics1 = jax.device_get((state1["params"], metrics1))
  for key in ("loss", "rpn_objectness", "roi_class", "mask_loss", "roi_positives"):
    np.testing.assert_allclose(metrics1[key], eight[1][key], rtol=2e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params1, eight[0])
  assert float(eight[1]["roi_positives"]) > 0 and float(eight[1]["rpn_positives"]) > 0


def test_the_detector_overfits_four_phantom_stacks(tiny_data_dir):
  """Recall of the bleeds the 64-px smoke images still show (boxes of at least 3 px a side) near 1."""
  config = _smoke(tiny_data_dir, optimizer__schedule="constant", optimizer__learning_rate=3e-3)
  source = pipeline.open_split(config.dataset, "train")
  plan = slice_plan.from_config(config.data)
  stacks = []
  for i in range(len(source)):
    example = slice_inputs.load(source, plan, i)
    sides = example["gt_boxes"][:, 2:] - example["gt_boxes"][:, :2]
    if example["gt_count"] > 0 and (sides[: example["gt_count"]] >= 3).all(1).any():
      stacks.append(example)
    if len(stacks) == 4:
      break
  assert len(stacks) == 4
  batch = {k: np.stack([e[k] for e in stacks] * 2) for k in ("image",) + instances.FIELDS}
  exp = loop.make_experiment(config)
  step = loop.make_train_step(exp)
  state = exp.init_state()
  placed = sharding.put_batch(batch, sharding.batch_sharding(exp.mesh), exp.train_keys)
  losses = []
  for _ in range(200):
    state, m = step(state, placed)
    losses.append(float(m["loss"]))
  assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
  pred = jax.device_get(loop.make_predict_step(exp)(state, sharding.put_batch(
      batch, sharding.batch_sharding(exp.mesh), ("image",))))
  task = exp.task
  hits = total = right_class = 0
  for i in range(4):
    g = int(batch["gt_count"][i])
    gt = batch["gt_boxes"][i, :g]
    visible = ((gt[:, 2:] - gt[:, :2]) >= 3).all(1)
    kept = pred["det_scores"][i] >= 0.5
    iou = np.asarray(boxes.iou(jnp.asarray(gt), jnp.asarray(pred["det_boxes"][i]))) * kept[None]
    best = iou.argmax(1)
    for j in np.flatnonzero(visible):
      total += 1
      if iou[j, best[j]] >= 0.5:
        hits += 1
        right_class += pred["det_classes"][i][best[j]] == task.class_of[batch["gt_subtypes"][i, j]]
  assert total >= 4
  assert hits / total >= 0.9, (hits, total)
  assert right_class / total >= 0.75, (right_class, total)
  # The slices' probability of any hemorrhage is the top detection's score: high on every stack.
  assert (pred["probabilities"][:4, 0] > 0.9).all()


def test_launch_smoke_writes_table_2_froc_and_volumes(tiny_data_dir, tmp_path):
  work = tmp_path / "det"
  run = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", "configs/hybrid_maskrcnn.py:smoke",
                        f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={work}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  report = (work / "report.md").read_text()
  for heading in ("Table 2", "FROC", "Volume"):
    assert heading in report, heading
  metrics = json.loads((work / "metrics.json").read_text())
  det = metrics["detection"]
  assert det["classes"] == ["IPH", "EDH/SDH", "SAH", "IVH"]
  t2 = det["table2"]
  assert t2["n_studies"] == len(np.unique(np.load(work / "predictions.npz")["study_id"]))
  assert set(t2["balanced"]["rows"]) >= {"IPH", "EDH/SDH", "SAH", "IVH"}
  assert len(det["froc"]["sensitivity"]) == 7
  preds = np.load(work / "predictions.npz")
  assert preds["det_boxes"].shape[1:] == (4, 4) and preds["probabilities"].shape[1] == 6
  # Study score = the most probable slice's (seed 001, Statistical Analysis), in the report's AUC.
  assert np.isfinite(metrics["scan"]["any"]["auc"])
