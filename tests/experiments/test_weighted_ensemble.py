"""Seed 000 §2.2, smoke variant, end to end through the stage runner: the planned stages, Tables 3 and 4 (against
the strong-vs-weak smoke's real runs), the difficult cases, reruns, Model 2's pre-trained encoder, and the
ensemble exported as one bundle predicting what the ensemble's own evaluation predicted."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import weighted_ensemble
from ich_jax import bundle as bundle_lib
from ich_jax.bundle import __main__ as bundle_cli
from ich_jax import experiments
from ich_jax.data import base_maps, datasets, folds, pipeline, sampling, stacking, stage_exports
from ich_jax.eval import ensemble_tables, prediction_files
from ich_jax.eval import metrics as M
from ich_jax.experiments import sweep
from ich_jax.experiments import weighted_ensemble as we
from ich_jax.train import loop
from tests.data_builders import fixtures
from tests.experiments.conftest import run_smoke


def test_the_plan_derives_each_stage_from_the_base_config(tiny_data_dir, tmp_path):
  c = weighted_ensemble.get_config("smoke")
  c.dataset.data_dir = tiny_data_dir
  stages = {s.name: s for s in experiments.stages(c, tmp_path)}
  order = ["pretrain_encoder", *we.BASES, *(name for name, _ in we.ENSEMBLES)]
  assert list(stages) == order + ["report"]
  pre, m2, m4, ens = (stages[n] for n in ("pretrain_encoder", "model2_pretrained", "model4_sah", "ensemble_sah"))
  # Template + replace: the pre-training trains the classification task on the encoder, with the base's inputs.
  assert pre.config.model.name == "inception_unet_encoder" and pre.config.model.options.to_dict() == {"width": 8,
                                                                                                     "depth": 2}
  assert pre.config.task.to_dict() == {"name": "multilabel_classification"} and pre.steps == ("train",)
  # Links: the linked stages' folders, and the stage reads them (their fingerprints are part of its own).
  assert m2.config.model.init_from == str((tmp_path / "pretrain_encoder").absolute())
  assert m2.after == ("pretrain_encoder",) and stages["model1_all"].after == ()
  assert m4.config.data.sampling.lesion == "subarachnoid" and m4.config.data.recipe[3][3] == "skull_stripped"
  assert stages["model1_all"].config.data.sampling.lesion == "any"
  assert ens.config.dataset.kind == "base_maps" and ens.config.model.name == "ensemble_weights"
  members = ("model1_all", "model2_pretrained", "model4_sah")
  assert list(ens.config.dataset.exports) == [str((tmp_path / n).absolute()) for n in members]
  assert "loss" not in ens.config.task and ens.steps == ("train", "eval") and ens.after == members
  assert stages["report"].always and set(stages["report"].after) == set(order)
  # Table 4 reads the strong-vs-weak experiment's layout: <its workdir>/<backbone>/strong.
  c.experiment.strong_vs_weak = "/runs/svw"
  assert we.classifier_dirs(c)["vgg19"].as_posix() == "/runs/svw/vgg19/strong"
  # A stage's steps are the config's: fewer steps are that stage's alone; a step no runner knows is an error
  # naming the stage.
  fewer = weighted_ensemble.get_config("smoke")
  fewer.experiment.stages.model1_all.steps = ("train",)
  got = {s.name: s.steps for s in experiments.stages(fewer, tmp_path)}
  assert got["model1_all"] == ("train",) and got["model2_pretrained"] == ("train", "export")
  bad = weighted_ensemble.get_config("smoke")
  bad.experiment.stages.model1_all.steps = ("train", "evaluate")
  with pytest.raises(ValueError, match="stage 'model1_all': unknown steps \\['evaluate'\\]"):
    experiments.stages(bad, tmp_path)


@pytest.fixture(scope="module")
def ensemble_run(tiny_data_dir, tmp_path_factory, svw):
  """The smoke ensemble; Table 4 compares it with the strong-vs-weak smoke's strong runs."""
  _, svw_root = svw
  return run_smoke(weighted_ensemble, tiny_data_dir, tmp_path_factory.mktemp("weighted_ensemble"),
                   {"experiment.strong_vs_weak": str(svw_root)})


def test_every_table_is_filled_from_the_runs(ensemble_run):
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
    scans = ensemble_tables.scan_table(prediction_files.read_predictions(workdir / stage / "predictions.csv"))
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
  # Difficult cases: the final ensemble's scans that metrics.difficult_cases picks, all of them listed.
  final = ensemble_tables.scan_table(prediction_files.read_predictions(workdir / "ensemble_all" / "predictions.csv"))
  hard = M.difficult_cases(final["labels"][:, 0], final["prob"])
  assert sorted(r["study_id"] for r in t["difficult"]) == sorted(final["study_id"][hard])
  assert len((workdir / "difficult_cases.csv").read_text().splitlines()) == 1 + hard.sum()


def test_table4_compares_the_final_ensemble_with_the_strong_vs_weak_runs(ensemble_run, svw):
  c, workdir = ensemble_run
  _, svw_root = svw
  t4 = json.loads((workdir / "tables.json").read_text())["table4"]
  text = (workdir / "report.md").read_text().split("## Table 4")[1].split("## Difficult")[0]
  assert sorted(t4) == sorted(c.experiment.classifiers) and "not run" not in text
  final = ensemble_tables.scan_table(prediction_files.read_predictions(workdir / "ensemble_all" / "predictions.csv"))
  for b in c.experiment.classifiers:
    e = t4[b]
    # Recomputed from the strong run's own predictions.csv, on the scans both predicted (both held out "test").
    strong = ensemble_tables.scan_table(prediction_files.read_predictions(svw_root / b / "strong" / "predictions.csv"))
    common, i, j = np.intersect1d(final["study_id"], strong["study_id"], return_indices=True)
    assert e["status"] == "ok" and e["n_scans"] == len(common) == len(final["study_id"])
    assert e["workdir"] == str(svw_root / b / "strong")
    y = final["labels"][i, 0]
    assert e["classifier"]["auc"] == pytest.approx(M.roc_auc(y, strong["prob"][j]))
    assert e["ensemble"]["auc"] == pytest.approx(M.roc_auc(y, final["prob"][i]))
    assert e["classifier"]["sensitivity"] == pytest.approx(M.binary_stats(y, strong["prob"][j], 0.5)["sensitivity"])
    test = M.delong_test(y, final["prob"][i], strong["prob"][j])
    assert e["delong"]["p_value"] == pytest.approx(test["p_value"], nan_ok=True)
    assert f"| {b} | {len(common)} |" in text
  # A classifier folder without predictions is listed as not run, naming the folder.
  missing = ensemble_tables.table4(final, {"resnet": str(workdir / "nowhere")}, 10, 0, 0.5)
  assert missing == {"resnet": {"status": f"not run: no predictions.csv in {workdir / 'nowhere'}"}}


def test_model2_starts_from_the_pretrained_encoder(ensemble_run):
  c, workdir = ensemble_run
  m2 = loop.read_config(workdir / "model2_pretrained")
  assert m2.model.init_from == str((workdir / "pretrain_encoder").absolute())
  exp = loop.make_experiment(m2)
  state = loop.load_pretrained(exp, exp.init_state(), m2.model.init_from)
  _, pre_state, _ = loop.restore_for_eval(loop.read_config(workdir / "pretrain_encoder"), workdir / "pretrain_encoder")
  unet = nnx.merge(exp.graphdef_train, state["params"], state["model_state"])
  for a, b in zip(jax.tree.leaves(nnx.state(unet.encoder, nnx.Param)), jax.tree.leaves(pre_state["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)


def test_the_exported_ensemble_predicts_what_its_evaluation_did(ensemble_run, tmp_path):
  """Five U-Nets and the weight model as one bundle: loaded and run on the held-out slices (HU records, the
  bundle's own preprocessing: four windows, skull stripping), it gives the ensemble stage's predictions."""
  c, workdir = ensemble_run
  run = workdir / "ensemble_all"
  # An experiment's stage is exported by its folder (its config.json and checkpoints).
  assert bundle_cli.main(["export", "--run", str(run), "--out", str(tmp_path / "bundle")]) == 0
  assert bundle_cli.main(["export", "--run", str(tmp_path)]) == 1                 # no config.json: named, exit 1
  b = bundle_lib.load(tmp_path / "bundle")
  roles = {m.name: m.role for m in b.members.values()}
  assert roles == {**{n: "segmentation" for n in weighted_ensemble.BASES}, "ensemble_all": "ensemble_weights"}
  assert b.outputs["mask"] == "ensemble_all" and b.outputs["probabilities"]["members"] == ["ensemble_all"]
  assert b.members["ensemble_all"].entry["inputs"] == list(weighted_ensemble.BASES)
  cfg = loop.read_config(run)
  source = pipeline.open_split(cfg.dataset, cfg.dataset.eval_split)
  records = [source[i] for i in range(len(source))]
  got = b.predict(b.preprocess(records), np.zeros(len(records)), batch_size=16)
  want = np.load(run / "predictions.npz")
  assert len(records) == len(want["probabilities"]) > 0
  np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
  np.testing.assert_array_equal(got["pred_mask"], want["pred_mask"])
  assert want["pred_mask"].any() and not want["pred_mask"].all()


def test_a_rerun_skips_every_finished_stage_and_refuses_a_changed_one(ensemble_run, capsys):
  c, workdir = ensemble_run
  stages = experiments.stages(c, workdir)
  capsys.readouterr()
  experiments.run(c, workdir)
  out = capsys.readouterr().out
  # Nothing retrained; the report (reading another experiment's runs, which may have appeared) runs again.
  assert out.count("done, skipped") == len(stages) - 1 and "report: running" in out
  # A classifier that is not there is named in the rewritten Table 4; the report's inputs are not "stale".
  more = sweep.override(c, {"experiment.classifiers": tuple(c.experiment.classifiers) + ("resnet50",)})
  experiments.run(more, workdir)
  t4 = json.loads((workdir / "tables.json").read_text())["table4"]
  assert t4["resnet50"]["status"].startswith("not run: no predictions.csv in ") and t4["vgg19"]["status"] == "ok"
  # A stage whose config changed since it ran is not silently mixed with the old run: it and the stages
  # reading it are named, and nothing runs.
  changed = sweep.override(c, {"experiment.stages.model3_sdh.overrides.data.sampling.lesion": "epidural"})
  with pytest.raises(RuntimeError, match=r"3 stage\(s\) .*'model3_sdh', 'ensemble_sdh', 'ensemble_all'"):
    experiments.run(changed, workdir)


def test_out_of_fold_plans_fold_models_and_their_assembly(tiny_data_dir, tmp_path):
  c = sweep.override(weighted_ensemble.get_config("smoke"), {"dataset.data_dir": tiny_data_dir,
                                                            "experiment.weight_maps": "out_of_fold"})
  stages = {s.name: s for s in experiments.stages(c, tmp_path)}
  train = c.dataset.train_split
  # Each fold model trains outside fold k and exports fold k; the full model exports only the held-out split.
  f1 = stages["oof/model1_all/fold1"]
  assert f1.config.dataset.train_split == f"{train}[fold!=1/2]" and list(f1.config.export.splits) == [f"{train}[fold=1/2]"]
  assert list(stages["model1_all"].config.export.splits) == [c.dataset.eval_split]
  # Model 2's fold model starts from its own fold's pre-training, never from the encoder that saw every slice.
  assert stages["oof/model2_pretrained/fold0"].config.model.init_from == str(tmp_path / "oof/pretrain_encoder/fold0")
  assert stages["oof/pretrain_encoder/fold0"].config.dataset.train_split == f"{train}[fold!=0/2]"
  assert stages["oof/model3_sdh"].after == ("oof/model3_sdh/fold0", "oof/model3_sdh/fold1", "model3_sdh")
  assert set(stages["ensemble_sdh"].after) == {"model1_all", "model2_pretrained", "model3_sdh", "oof/model1_all",
                                               "oof/model2_pretrained", "oof/model3_sdh"}
  # The weight model still reads the full base models' folders (their checkpoints make the bundle).
  assert list(stages["ensemble_sdh"].config.dataset.exports) == [str(tmp_path / m) for m in we.BASES[:3]]
  assert not any(n.startswith("oof/") for n in (s.name for s in experiments.stages(
      weighted_ensemble.get_config("smoke"), tmp_path)))   # the smoke: in-sample, no fold models
  with pytest.raises(ValueError, match="experiment.weight_maps='both'"):
    experiments.stages(sweep.override(c, {"experiment.weight_maps": "both"}), tmp_path)
  with pytest.raises(ValueError, match="make their own folds of a plain split"):
    experiments.stages(sweep.override(c, {"dataset.train_split": "train[fold!=0/5]"}), tmp_path)


@pytest.fixture(scope="module")
def oof_run(tiny_data_dir, tmp_path_factory):
  """Model 1 with out-of-fold maps (2 folds) alone: the full model, its two fold models and their assembly."""
  return run_smoke(weighted_ensemble, tiny_data_dir, tmp_path_factory.mktemp("we_oof"),
                   {"experiment.weight_maps": "out_of_fold", "experiment.only": ("model1_all", "oof/model1_all")})


def test_the_weight_model_trains_on_out_of_fold_maps(oof_run):
  c, root = oof_run
  train = c.dataset.train_split
  ens = {s.name: s for s in experiments.stages(c, root)}["ensemble_basic"].config
  ds = sweep.override(ens, {"dataset.exports": (str(root / "model1_all"),)}).dataset
  source = base_maps.open_split(ds, train)          # what the weight model's training reads
  full = pipeline.open_split(ds, train)
  ids = full.metadata(("series_id", "slice_index"))
  series, index = folds.as_text(ids["series_id"]), ids["slice_index"].astype(int)
  seen = set()
  for k in range(2):
    run = root / f"oof/model1_all/fold{k}"
    fold = stage_exports.read_export(stage_exports.export_dir(run, f"{train}[fold={k}/2]"))
    # The fold model never trained on the slices whose maps it gave.
    trained_on = set(folds.as_text(datasets.read_field(datasets.open_split(ds, f"{train}[fold!={k}/2]"),
                                                       "study_id")))
    assert loop.read_config(run).dataset.train_split == f"{train}[fold!={k}/2]"
    assert not trained_on & set(fold["study_id"]) and len(fold["maps"])
    for row in range(len(fold["maps"])):
      r = np.flatnonzero((series == fold["series_id"][row]) & (index == int(fold["slice_index"][row])))
      assert len(r) == 1
      np.testing.assert_array_equal(source.maps(r[0], fold["series_id"][row], fold["slice_index"][row])[..., 0],
                                    fold["maps"][row].astype(np.float32))
      seen.add(r[0])
  assert seen == set(range(len(source)))            # every training slice, each from its fold's model
  # Not the maps the full model (which saw every training slice) makes of them.
  exp, state, _ = loop.restore_for_eval(loop.read_config(root / "model1_all"), root / "model1_all")
  in_sample = loop.predict_split(exp, state, full, batch_size=16, method="export", fields=("slice_index",))
  oof = np.stack([source.maps(i, series[i], index[i])[..., 0] for i in range(len(full))])
  assert not np.array_equal(oof, np.asarray(in_sample["maps"], np.float16).astype(np.float32))
  # The assembly checks that the folds are the split's records.
  folds_dirs = [stage_exports.export_dir(root / f"oof/model1_all/fold{k}", f"{train}[fold={k}/2]") for k in range(2)]
  with pytest.raises(ValueError, match="the folds hold 160 slices, the split 159 records"):
    stacking.out_of_fold(folds_dirs, root / "x", records=(ids["series_id"][1:], ids["slice_index"][1:]))


def test_on_physionet_model5_trains_on_the_studies_of_at_most_5_ml(tmp_path_factory):
  """PhysioNet has volumes now (from its masks), so Model 5's small-lesion set exists there: its scans are
  the studies with 0 < blood ≤ 5 mL (the fixture's 049: 1.3 mL, 053: 3.2 mL; not 052's 5.7 mL) and as many
  blood-free ones."""
  root = tmp_path_factory.mktemp("we_physionet")
  fx = fixtures.write_physionet(root / "manual")
  c = weighted_ensemble.get_config("smoke")
  c.dataset.manual_dir = str(fx.root)     # as --config.dataset.manual_dir=... (the smoke's tiny set has none)
  c = sweep.override(c, {"dataset.name": "physionet_ct_ich", "dataset.config": "slices256",
                         "dataset.data_dir": str(root / "tfds"), "dataset.train_split": "fold0+fold1+fold2+fold3",
                         "dataset.eval_split": "fold4", "experiment.only": ("model5_small",)})
  workdir = root / "runs"
  experiments.run(c, workdir)
  m5 = loop.read_config(workdir / "model5_small")
  assert m5.data.sampling.lesion == "small" and m5.data.sampling.mode == "balanced_scans"
  assert (workdir / "model5_small" / "export" / "fold4" / "maps.npy").is_file()
  source = pipeline.open_split(m5.dataset, m5.dataset.train_split)
  meta = source.metadata(("study_id", "study_blood_ml"))
  drawn = sampling.epoch_sampler(source, m5.data, seed=m5.seed).records(0)
  study = np.char.decode(meta["study_id"].astype(bytes))
  ml = {s: float(v) for s, v in zip(study, meta["study_blood_ml"])}
  np.testing.assert_allclose([ml["049"], ml["052"], ml["053"]],
                             [fx.patients[n].blood.sum() * 5 * fixtures.PIXEL_MM ** 2 / 1000 for n in (49, 52, 53)],
                             rtol=1e-5)
  # Two small-bleed scans and two blood-free draws (the training folds hold one blood-free scan: drawn twice).
  assert sorted(study[drawn]) == sorted(["049"] * 6 + ["053"] * 6 + ["051"] * 12)


def test_table3_says_why_a_dataset_without_volumes_has_no_small_subset():
  y = np.array([[1, 0, 0, 0, 0, 1], [0] * 6, [1, 0, 0, 0, 1, 0], [0] * 6], bool)
  scans = {"study_id": np.array(["a", "b", "c", "d"]), "prob": np.array([0.9, 0.2, 0.6, 0.4]), "labels": y}
  t = {"table3": ensemble_tables.table3({"basic": scans}, "basic", 5.0, 0, 0), "table4": {}, "difficult": []}
  assert "small" not in t["table3"]["subsets"] and "no study_blood_ml" in t["table3"]["note"]
  assert "No small-lesion subset: the predictions carry no study_blood_ml" in ensemble_tables.format_markdown(
      t, title="t", meta="m")
  with_ml = ensemble_tables.table3({"basic": {**scans, "blood_ml": np.array([2.0, 0, 30.0, 0])}}, "basic", 5.0, 0, 0)
  assert with_ml["subsets"]["small"] == {"n_scans": 2, "n_positive": 1} and "note" not in with_ml
