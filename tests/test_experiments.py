"""Multi-stage experiments through the shared loop: the stage plan, and both seed experiments' smoke variants
end to end (configs/weighted_ensemble.py:smoke, configs/physionet_patch_unet.py:smoke), with their report
tables checked against the stages' own predictions."""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from configs import physionet_patch_unet, weighted_ensemble
from ich_jax import experiments
from ich_jax.eval import ensemble_tables, report
from ich_jax.eval import metrics as M
from ich_jax.train import loop


@pytest.fixture(scope="module")
def rbg_prng_module():
  """JAX's "rbg" PRNG while the runs initialise their models (eager initialisation compiles a kernel per
  weight shape, a fifth as slow with rbg); which generator draws the initial weights is not under test."""
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", old)


def test_plan_derives_each_stage_from_the_base_config(tiny_data_dir, tmp_path):
  c = weighted_ensemble.get_config("smoke")
  c.dataset.data_dir = tiny_data_dir
  stages = {s.name: s for s in experiments.plan(c, tmp_path)}
  assert list(stages) == list(c.experiment.order)
  pre, m2, m4, ens = (stages[n] for n in ("pretrain_encoder", "model2_pretrained", "model4_sah", "ensemble_sah"))
  # Template + replace: the pre-training trains the classification task on the encoder, with the base's inputs.
  assert pre.config.model.name == "inception_unet_encoder" and pre.config.model.options.to_dict() == {"width": 8,
                                                                                                     "depth": 2}
  assert pre.config.task.to_dict() == {"name": "multilabel_classification"} and pre.steps == ("train",)
  assert m2.config.model.init_from == str((tmp_path / "pretrain_encoder").absolute())
  assert m4.config.data.sampling.lesion == "subarachnoid" and m4.config.data.recipe[3][3] == "skull_stripped"
  assert stages["model1_all"].config.data.sampling.lesion == "any"
  assert ens.config.dataset.kind == "base_maps" and ens.config.model.name == "ensemble_weights"
  assert list(ens.config.dataset.exports) == [str((tmp_path / n).absolute()) for n in
                                              ("model1_all", "model2_pretrained", "model4_sah")]
  assert "loss" not in ens.config.task and ens.steps == ("train", "evaluate")

  # Per-fold stages: one copy per round, each with its round's splits; a link to a later stage is an error.
  p = physionet_patch_unet.get_config("smoke")
  p.dataset.data_dir = tiny_data_dir
  p.experiment.cv.folds = (0, 3)
  plan = experiments.plan(p, tmp_path)
  assert [s.key for s in plan] == [f"fold{k}/{m}" for k in (0, 3) for m in physionet_patch_unet.METHODS]
  patch = plan[-1].config
  assert (patch.dataset.train_split, patch.dataset.validation_split, patch.dataset.eval_split) == (
      "train+validation+test[fold=0,1,2/5]", "train+validation+test[fold=4/5]", "train+validation+test[fold=3/5]")
  assert patch.dataset.kind == "patches" and (patch.task.patch, patch.task.stride) == (16, 8)
  assert plan[1].config.train.batch_size == 8 and plan[1].config.data.sampling.mode == "balanced"
  p.experiment.stages.threshold.links = (("model.init_from", "patch_unet"),)
  with pytest.raises(KeyError, match="not a stage before"):
    experiments.plan(p, tmp_path)


@pytest.fixture(scope="module")
def ensemble_run(tiny_data_dir, tmp_path_factory, rbg_prng_module):
  c = weighted_ensemble.get_config("smoke")
  c.dataset.data_dir = tiny_data_dir
  workdir = tmp_path_factory.mktemp("weighted_ensemble")
  # A stand-in for one strong-vs-weak classifier run (issue 6's workdirs): predictions.csv in the standard
  # format, here a copy of the basic ensemble's, written once that stage has run (see the test).
  c.experiment.compare_runs = ConfigDict({"densenet121": str(workdir / "fake_densenet121"),
                                          "vgg19": str(workdir / "not_there")})
  experiments.run(c, workdir)
  return c, workdir


def test_weighted_ensemble_smoke_writes_every_table_from_the_run(ensemble_run):
  c, workdir = ensemble_run
  text = (workdir / "report.md").read_text()
  t = json.loads((workdir / "tables.json").read_text())
  # Table 3: five combinations × four case sets, each an AUC computed from that stage's predictions.
  rows = t["table3"]["rows"]        # tables.json keeps its keys sorted; report.md keeps the paper's order
  assert sorted(rows) == sorted(label for label, _ in c.experiment.table3)
  assert [text.index(f"| {label} |") for label, _ in c.experiment.table3] == sorted(
      text.index(f"| {label} |") for label, _ in c.experiment.table3)
  for label, stage in c.experiment.table3:
    entry = rows[label]
    scans = ensemble_tables.scan_table(report.read_predictions(workdir / stage / "predictions.csv"))
    assert entry["all"]["auc"] == pytest.approx(M.roc_auc(scans["labels"][:, 0], scans["prob"]))
    for subset in ("all", "subdural", "subarachnoid", "small"):
      assert entry[subset]["n_positive"] > 0 and entry[subset]["n_negative"] > 0
      assert 0 <= entry[subset]["auc"] <= 1
      assert (entry[subset]["delong_vs_basic"] is None) == (label == "basic (1+2)")
    assert label in text
  # The lesion subsets: that lesion's scans and as many normal ones.
  for subset in ("subdural", "subarachnoid", "small"):
    s = t["table3"]["subsets"][subset]
    assert s["n_scans"] == 2 * s["n_positive"]
  assert "not run" not in text.split("## Table 4")[0]
  # Table 4: a missing run says so; the stand-in is compared on the common scans.
  assert t["table4"]["vgg19"]["status"].startswith("not run: no predictions.csv")
  assert "not run: no predictions.csv in " + str(workdir / "not_there") in text
  # Difficult cases: the final ensemble's scans that metrics.difficult_cases picks, all of them listed.
  final = ensemble_tables.scan_table(report.read_predictions(workdir / "ensemble_all" / "predictions.csv"))
  hard = M.difficult_cases(final["labels"][:, 0], final["prob"])
  assert sorted(r["study_id"] for r in t["difficult"]) == sorted(final["study_id"][hard])
  assert len((workdir / "difficult_cases.csv").read_text().splitlines()) == 1 + hard.sum()


def test_weighted_ensemble_rerun_skips_finished_stages_and_compares_a_classifier(ensemble_run, capsys):
  c, workdir = ensemble_run
  # The stand-in classifier: the basic ensemble's predictions, so its AUC is the basic ensemble's.
  fake = workdir / "fake_densenet121"
  fake.mkdir()
  (fake / "predictions.csv").write_text((workdir / "ensemble_basic" / "predictions.csv").read_text())
  experiments.run(c, workdir)
  out = capsys.readouterr().out
  assert "Stage " not in out and "Report:" in out                 # nothing retrained, the report rewritten
  t = json.loads((workdir / "tables.json").read_text())
  e = t["table4"]["densenet121"]
  assert e["status"] == "ok" and e["n_scans"] == t["table3"]["subsets"]["all"]["n_scans"]
  assert e["classifier"]["auc"] == pytest.approx(t["table3"]["rows"]["basic (1+2)"]["all"]["auc"])
  assert e["ensemble"]["auc"] == pytest.approx(t["table3"]["rows"]["all five (1–5)"]["all"]["auc"])
  assert 0 <= e["delong"]["p_value"] <= 1 or np.isnan(e["delong"]["p_value"])
  # A stage whose config changed since it ran is not silently mixed with the old run.
  changed = weighted_ensemble.get_config("smoke")
  changed.dataset.data_dir = c.dataset.data_dir
  changed.experiment.stages.model3_sdh.overrides.data.sampling.lesion = "epidural"
  with pytest.raises(ValueError, match="stage model3_sdh: .* holds a run of another config"):
    experiments.run(changed, workdir)


def test_model2_starts_from_the_pretrained_encoder(ensemble_run):
  c, workdir = ensemble_run
  stages = {s.name: s for s in experiments.plan(c, workdir)}
  m2 = stages["model2_pretrained"].config
  exp = loop.make_experiment(m2)
  state = loop.load_pretrained(exp, exp.init_state(), m2.model.init_from)
  _, pre_state, _ = loop.restore_for_eval(loop.read_config(workdir / "pretrain_encoder"), workdir / "pretrain_encoder")
  unet = nnx.merge(exp.graphdef_train, state["params"], state["model_state"])
  for a, b in zip(jax.tree.leaves(nnx.state(unet.encoder, nnx.Param)), jax.tree.leaves(pre_state["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)


def test_patch_unet_smoke_writes_tables_5_and_6_from_the_run(tiny_data_dir, tmp_path, rbg_prng_module):
  c = physionet_patch_unet.get_config("smoke")
  c.dataset.data_dir = tiny_data_dir
  experiments.run(c, tmp_path)
  text = (tmp_path / "report.md").read_text()
  t = json.loads((tmp_path / "tables.json").read_text())
  for method, label in (("threshold", "Threshold baseline"), ("full_unet", "U-Net, full slices"),
                        ("patch_unet", "U-Net, patches")):
    m = t["methods"][method]
    preds = np.load(tmp_path / "fold0" / method / "predictions.npz")
    blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
    assert m["n_slices"] == len(preds["mask"]) and m["n_slices_with_blood"] == blood.sum() > 0
    dice = M.dice(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2))
    assert m["dice_slices_with_blood"] == pytest.approx(dice.mean())
    assert [r["threshold"] for r in m["table6"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
    y, p = preds["labels"][:, 0] > 0.5, preds["probabilities"][:, 0]
    assert m["table6"][2]["sensitivity"] == pytest.approx(((p >= 0.7) & y).sum() / y.sum())
    for stat in ("min", "max", "std", "mean"):
      assert np.isfinite(m["table5"]["dice"][stat]) and np.isfinite(m["table5"]["specificity"][stat])
    assert f"## {label}" in text
  assert "not run" not in text and re.search(r"\| Threshold baseline \(grid search\) \| \d+ \| \d+ \| \d\.\d{3}", text)
  # What each round chose: the thresholds of the grid search and the checkpoint of best validation Jaccard.
  chosen = json.loads((tmp_path / "fold0" / "threshold" / "thresholds.json").read_text())
  assert 100 <= chosen["lower"] <= 210 <= chosen["upper"] <= 255
  sel = json.loads((tmp_path / "fold0" / "patch_unet" / "selection.json").read_text())
  assert sorted(sel["scores"]) == ["1", "2"] and sel["step"] in (1, 2)
  assert f"checkpoint {sel['step']}" in text
  # The patch U-Net trained on 16² windows and was evaluated on whole 32² slices, stitched.
  patch_cfg = loop.read_config(tmp_path / "fold0" / "patch_unet")
  assert patch_cfg.dataset.kind == "patches" and patch_cfg.task.patch == 16
  assert preds["pred_mask"].shape[1:] == (32, 32)
