"""The README's seed-experiment commands, end to end on the real builders' fixtures.

Each `python launch.py --config ...` line of the README's paper-table table (tests/configs/test_readme_commands.py
reads them) runs here as its config's `:smoke` variant (tiny models, few steps) with the command's dataset
switches: dataset name, builder config, splits, external sets and their downloads, the link to another
experiment's runs. The downloads (`/data/...`) are the real-layout fixtures of tests/data_builders/fixtures.py
(rsna_ich with a stage_1_sample_submission.csv, physionet_ct_ich, cq500), built by the run itself, as the command
builds them, under the registered builder configs the command names (slices256_stage1, slices256, slices; the
fixtures' 64-pixel slices stored at 256 or 512) into one data_dir shared by the module. Switches that size the
model (`--config.data.image_size`) stay the smoke's. Each test checks that the experiment reached its report and
that every number the fixture's data can support is computed, recomputing some from the runs' predictions.
"""
import json
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from ich_jax import LABELS, SIZE_BINS, size_bin
from ich_jax.data import datasets, external, pipeline, stage_exports
from ich_jax.eval import ensemble_tables, prediction_files
from ich_jax.eval import metrics as M
from ich_jax.eval.formatting import MISSING
from tests.configs.test_readme_commands import COMMANDS, _parse
from tests.data_builders import fixtures
from tests.data_builders.test_rsna_ich import _series_of

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
# PhysioNet: 15 patients (049–063, 052 the chronic ICH), so that each of the builder's five folds holds two
# patients with blood and one without; seed 5 puts in fold4 (the README's test fold) 050 (0.67 mL: the ≤ 5 mL
# subset and seed 001's "small" bin; IPH, IVH, SAH), 053 (41.7 mL, "large"; IPH, SDH) and 054 (no blood).
PHYSIONET = {"numbers": tuple(range(49, 64)), "chronic": 52, "seed": 5}


def _command(config: str) -> str:
  (command,) = [c for c in COMMANDS if f"configs/{config}.py" in c]
  return command


def _argv(command: str, workdir, data_dir, downloads, runs=None) -> list[str]:
  """`command`'s arguments with `:smoke` added to its config argument, `workdir`, the downloads (`/data/...` →
  `downloads`) and other experiments' workdirs (README workdir → `runs`) replaced, the data_dir set, and switches
  outside `dataset.` and `experiment.` dropped (the smoke's sizes stay)."""
  argv = shlex.split(command)[1:]
  out = []
  for i, arg in enumerate(argv):
    if argv[i - 1] == "--config":
      path, _, variant = arg.partition(":")
      arg = f"{path}:{variant + ':' if variant else ''}smoke"
    elif argv[i - 1] == "--workdir":
      arg = str(workdir)
    elif arg.startswith("--config."):
      key, _, value = arg.partition("=")
      if not key.startswith(("--config.dataset.", "--config.experiment.")):
        continue
      if value.startswith("/data/"):
        value = str(downloads[value])                 # a README download not in `downloads`: KeyError
      arg = f"{key}={(runs or {}).get(value, value)}"
    out.append(arg)
  return out + [f"--config.dataset.data_dir={data_dir}"]


def write_downloads(root: pathlib.Path, cq500) -> dict:
  """The three downloads in their real layouts under `root`, the README's paths for them, and the data_dir."""
  rsna = fixtures.write_rsna(root / "rsna")
  # Seed 003's test set: the stage-1 test images, named by stage_1_sample_submission.csv (six rows an image).
  # Patient E's series and patient B's second study (B's first is stage-1 training data: left out).
  by_patient = _series_of(rsna)
  _, b2 = by_patient["ID_pat00b"]
  (e,) = by_patient["ID_pat00e"]
  held = rsna.series[e] + rsna.series[b2]
  with open(rsna.root / "stage_1_sample_submission.csv", "w", newline="") as f:
    f.write("ID,Label\n" + "".join(f"{i}_{s},0.5\n" for i in held for s in LABELS))
  physionet = fixtures.write_physionet(root / "ct-ich", **PHYSIONET)
  return {"rsna": rsna, "held": held, "physionet": physionet, "cq500": cq500,
          "downloads": {"/data/rsna": rsna.root, "/data/ct-ich": physionet.root, "/data/cq500": cq500.root},
          "data_dir": root / "tfds", "root": root}


@pytest.fixture(scope="module")
def real(tmp_path_factory, cq500_fixture):
  return write_downloads(tmp_path_factory.mktemp("real"), cq500_fixture)


def _launch(real, config_name: str, runs=None):
  """The README command of configs/`config_name`.py, smoke-sized, run by launch.py in a process of its own:
  (its config as launch.py parsed it, workdir, stdout).

  Its own process, with XLA's defaults and launch.py's flags as a user runs it, not the test session's
  XLA_FLAGS (tests/conftest.py: 8 virtual devices).
  """
  workdir = real["root"] / "runs" / config_name
  argv = _argv(_command(config_name), workdir, real["data_dir"], real["downloads"], runs)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", ICH_JAX_BUILD_WORKERS="1")   # the fixtures' few files: no pool of workers
  run = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
  config, _ = _parse(shlex.join(["python", *(str(ROOT / a) if a.startswith("configs/") else a for a in argv)]))
  return config, workdir, run.stdout


def _study_ml(dataset, split: str) -> dict[str, float]:
  """The builder's study_blood_ml (from PhysioNet's masks at their own resolution) per study of `split`."""
  meta = pipeline.open_split(dataset, split).metadata(("study_id", "study_blood_ml"))
  return {fixtures.text(s): float(v) for s, v in zip(meta["study_id"], meta["study_blood_ml"])}


def _table_cells(text: str, heading: str, skip: str) -> list[list[str]]:
  """The cells of the markdown table under `heading` in `text` (the header row, which holds `skip`, left out)."""
  section = text.split(heading)[1].split("\n## ")[0]
  return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
          if line.startswith("| ") and skip not in line]


def _dataset(config) -> tuple[str, str, str]:
  """What the README command's switches set: the dataset, its builder config and the held-out split."""
  return config.dataset.name, config.dataset.config, config.dataset.eval_split


def _scan_auc(preds: dict, column: int = 0) -> float:
  """Scan-level AUC of `column` (a scan's score: its most probable slice) from a predictions file's arrays."""
  _, p = M.scan_scores(preds["probabilities"][:, column], preds["study_id"])
  _, y = M.scan_scores(preds["labels"][:, column], preds["study_id"])
  return M.roc_auc(y > 0.5, p)


# --- Seed 000 §2.1: weak vs strong annotation on PhysioNet, CQ500 as external test set -----------------

SVW_BACKBONES = ("densenet121", "inception_resnet_v2", "mobilenet_v2", "vgg19")


@pytest.fixture(scope="module")
def svw(real):
  return _launch(real, "strong_vs_weak")


def test_strong_vs_weak_table2_on_physionet_fold4_and_its_cq500_column(svw, real):
  config, root, _ = svw
  assert _dataset(config) == ("physionet_ct_ich", "slices256", "fold4")
  assert config.dataset.train_split == "fold0+fold1+fold2+fold3"
  assert [s.label for s in external.parse(config.experiment.external, config.dataset)] == ["cq500/slices256:test"]
  text = (root / "report.md").read_text()
  # Table 2 at both levels: accuracy, AUC, sensitivity, specificity of all eight runs computed; the DeLong
  # column on the strong rows (n/a where fold4's one scan without blood leaves no variance).
  for level in ("slice", "scan"):
    rows = _table_cells(text, f"## Table 2, {level} level", "Annotation")
    assert len(rows) == 8
    for cells in rows:
      assert all(c and c != MISSING for c in cells[:6]) and bool(cells[6]) == (cells[1] == "strong"), cells
  # Held out: fold4's studies (050, 053 with blood; 054 without); a row recomputed from its predictions.csv.
  t2 = json.loads((root / "metrics.json").read_text())["table2"]
  ml = _study_ml(config.dataset, "fold4")
  for b in SVW_BACKBONES:
    preds = prediction_files.read_predictions(root / b / "strong" / "predictions.csv")
    assert set(preds["study_id"]) == set(ml) == {"050", "053", "054"}
    assert t2["scan"][b]["strong"]["auc"] == pytest.approx(_scan_auc(preds))
    assert t2["slice"][b]["strong"]["auc"] == pytest.approx(M.roc_auc(preds["labels"][:, 0] > 0.5,
                                                                      preds["probabilities"][:, 0]))
  # The CQ500 column: every run scored on its two scans (majority of three readers), scan level only.
  t = json.loads((root / "external" / "metrics.json").read_text())
  assert t["sets"] == ["cq500.test"]
  for b in SVW_BACKBONES:
    for a in ("weak", "strong"):
      r = t["results"]["cq500.test"][f"{b}/{a}"]
      preds = prediction_files.read_predictions(root / "external" / "cq500.test" / f"{b}_{a}.csv")
      assert r["n_scans"] == 2 and r["slice"] is None
      assert r["scan"]["any"]["auc"] == pytest.approx(_scan_auc(preds))
  assert t["reader_agreement"]["cq500.test"]["n_readers"] == 3


# --- Seed 000 §2.2: the weighted ensemble on PhysioNet, Table 4 against the strong-vs-weak runs -----------


@pytest.fixture(scope="module")
def weighted(real, svw):
  """The README links the ensemble to the strong-vs-weak command's workdir: here, that run's."""
  readme_svw = shlex.split(_command("strong_vs_weak")).index("--workdir")
  return _launch(real, "weighted_ensemble",
                 {shlex.split(_command("strong_vs_weak"))[readme_svw + 1]: str(svw[1])})


def test_weighted_ensemble_tables_3_and_4_on_physionet_with_its_small_lesion_subset(weighted, svw):
  config, root, _ = weighted
  assert _dataset(config) == ("physionet_ct_ich", "slices256", "fold4")
  assert config.experiment.strong_vs_weak == str(svw[1])
  t = json.loads((root / "tables.json").read_text())
  # The ≤ 5 mL subset exists on PhysioNet (volumes from its masks): fold4's studies of 0 < blood ≤ 5 mL and as
  # many without blood; subdural and subarachnoid likewise.
  ml = _study_ml(config.dataset, "fold4")
  small = [s for s, v in ml.items() if 0 < v <= config.data.small_bleed_ml]
  assert small == ["050"] and "note" not in t["table3"]
  assert t["table3"]["subsets"] == {"all": {"n_scans": 3, "n_positive": 2},
                                    **{k: {"n_scans": 2, "n_positive": 1}
                                       for k in ("subdural", "subarachnoid", "small")}}
  for label, stage in config.experiment.table3:
    entry = t["table3"]["rows"][label]
    scans = ensemble_tables.scan_table(prediction_files.read_predictions(root / stage / "predictions.csv"))
    assert entry["all"]["auc"] == pytest.approx(M.roc_auc(scans["labels"][:, 0], scans["prob"]))
    assert all(entry[k]["auc"] is not None for k in ("subdural", "subarachnoid", "small"))
  text = (root / "report.md").read_text()
  rows = _table_cells(text, "## Table 3", "Ensemble")
  assert len(rows) == 5 and all(c != MISSING for cells in rows for c in cells[1::2]), rows   # every AUC
  # Table 4: every strong-vs-weak classifier against the final ensemble on fold4's three scans.
  for b in config.experiment.classifiers:
    e = t["table4"][b]
    assert e["status"] == "ok" and e["n_scans"] == 3 and e["workdir"] == str(svw[1] / b / "strong")
    strong = ensemble_tables.scan_table(prediction_files.read_predictions(svw[1] / b / "strong" / "predictions.csv"))
    assert e["classifier"]["auc"] == pytest.approx(M.roc_auc(strong["labels"][:, 0], strong["prob"]))
    assert e["ensemble"]["auc"] is not None


# --- Seed 003: the cascade on RSNA's stage-1 test set; PhysioNet-ICH and CQ500 columns (Tables 3 and 4) ------


@pytest.fixture(scope="module")
def cascade(real):
  return _launch(real, "rsna_cascade")


def test_rsna_cascade_tables_3_and_4_on_the_stage1_test_set_and_both_external_columns(cascade, real):
  config, root, _ = cascade
  assert _dataset(config) == ("rsna_ich", "slices256_stage1", "test")
  sets = external.parse(config.experiment.external, config.dataset)
  assert [s.label for s in sets] == ["cq500/slices256:test",
                                     "physionet_ct_ich/slices256:fold0+fold1+fold2+fold3+fold4"]
  # Tested on exactly the stage-1 test images the sample submission names (those the builder could read).
  ens = prediction_files.read_predictions(root / "ensemble" / "predictions.csv")
  held = {real["rsna"].images[i].series for i in real["held"]}
  assert set(ens["series_id"]) == held and len(ens["series_id"]) == len(
      [i for i in real["held"] if real["rsna"].images[i].path.name not in real["rsna"].bad])
  # Table 3, both levels: every stage of every backbone and the ensemble, no cell missing.
  text = (root / "report.md").read_text()
  for level in ("slice", "scan"):
    rows = _table_cells(text, f"## Table 3, {level} level", "Backbone")
    assert len(rows) == 3 * 3 + 1 and rows[-1][:2] == ["all", "Model_ensemble"]
    assert all(c and c != MISSING for cells in rows for c in cells), rows
  summary = json.loads((root / "metrics.json").read_text())
  assert summary["table3"]["scan"][-1]["auc_any"] == pytest.approx(_scan_auc(ens))
  # Table 4 on RSNA: an AUC for each class the two test scans hold and lack, n/a for the others.
  _, y = M.scan_scores(ens["labels"], ens["study_id"])
  _, p = M.scan_scores(ens["probabilities"], ens["study_id"])
  for c, name in enumerate(LABELS):
    present = bool(y[:, c].max() > 0.5 > y[:, c].min())
    got = summary["table4"]["scan"][name]["auc"]
    assert (got is not None) == present, name
    if present:
      assert got == pytest.approx(M.roc_auc(y[:, c] > 0.5, p[:, c]))
  assert summary["table4"]["scan"]["any"]["auc"] is not None
  # Table 4's external columns: the ensemble on CQ500 (scan level alone) and on all 15 PhysioNet studies.
  t = json.loads((root / "external" / "metrics.json").read_text())
  for s, n_scans in zip(sets, (2, 15)):
    r = t["results"][s.key]["Model_ensemble"]
    export = stage_exports.read_export(stage_exports.export_dir(root / "ensemble", s.key))
    assert r["n_scans"] == n_scans and r["scan"]["any"]["auc"] == pytest.approx(_scan_auc(export))
    assert (r["slice"] is None) == (s.name == "cq500")
  physionet = t["results"][sets[1].key]["Model_ensemble"]
  assert all(physionet["scan"][name]["auc"] is not None for name in LABELS)     # every class in 15 studies
  export = stage_exports.read_export(stage_exports.export_dir(root / "ensemble", sets[1].key))
  assert physionet["slice"]["any"]["auc"] == pytest.approx(
      M.roc_auc(export["labels"][:, 0] > 0.5, export["probabilities"][:, 0]))
  scan = (root / "external" / "report.md").read_text().split("## Table 4, scan level")[1].split("\n## ")[0]
  assert all(s.label in scan for s in sets)


# --- Seed 002: threshold baseline, full-slice and patch U-Net on PhysioNet (Tables 5 and 6) ----------------


@pytest.fixture(scope="module")
def patch_unet(real):
  return _launch(real, "physionet_patch_unet")


def test_patch_unet_tables_5_and_6_on_physionet_without_the_chronic_subject(patch_unet, real):
  config, root, _ = patch_unet
  assert (config.dataset.name, config.dataset.config, config.dataset.exclude_chronic) == (
      "physionet_ct_ich", "slices", True)
  # Its own build (slices_exclude_chronic, 512²): every fold without the chronic-ICH subject 052.
  assert datasets.builder(config.dataset).builder_config.name == "slices_exclude_chronic"
  built = _study_ml(config.dataset, "+".join(f"fold{k}" for k in range(5)))
  assert set(built) == {f"{n:03d}" for n in PHYSIONET["numbers"]} - {"052"}
  t = json.loads((root / "tables.json").read_text())
  # The public code's slice rule scaled to the smoke's 32² slices: more than 20 × 20 of 512² → 2 pixels.
  assert t["slice_rule"] == {"min_pixels": 2, "reference_min_pixels": 2}
  for method in ("threshold", "full_unet", "patch_unet"):
    m = t["methods"][method]
    preds = np.load(root / "fold0" / method / "predictions.npz")
    assert set(preds["study_id"].astype(str)) <= set(built) and "052" not in set(preds["study_id"].astype(str))
    blood = preds["mask"].reshape(len(preds["mask"]), -1).any(1)
    assert m["n_slices"] == len(preds["mask"]) and m["n_slices_with_blood"] == blood.sum() > 0
    assert m["dice_slices_with_blood"] == pytest.approx(
        M.dice(preds["pred_mask"][blood], preds["mask"][blood], axis=(1, 2)).mean())
    for stat in ("dice", "jaccard", "sensitivity", "specificity"):
      assert all(np.isfinite(m["table5"][stat][k]) for k in ("min", "max", "std", "mean")), (method, stat)
    y, p = (preds["mask"] > 0).sum((1, 2)) >= 2, preds["probabilities"][:, 0]
    row = m["table6"][2]
    assert row["threshold"] == 0.7 and row["sensitivity"] == pytest.approx(((p >= 0.7) & y).sum() / y.sum())
    assert row["specificity"] == pytest.approx(((p < 0.7) & ~y).sum() / (~y).sum())
  assert "not run" not in (root / "report.md").read_text()


# --- Seed 001: the hybrid Mask R-CNN on PhysioNet (Table 2, size bins from its volumes) ---------------------


@pytest.fixture(scope="module")
def maskrcnn(real):
  return _launch(real, "hybrid_maskrcnn")


def test_maskrcnn_table2_published_and_all_negatives_with_size_bins_of_the_physionet_volumes(maskrcnn):
  config, root, _ = maskrcnn
  assert _dataset(config) == ("physionet_ct_ich", "slices", "fold4")
  t2 = json.loads((root / "metrics.json").read_text())["detection"]["table2"]
  assert t2["reference"] == "mask" and (t2["n_studies"], t2["n_positive_studies"]) == (3, 2)
  # Size bins: the studies' total blood from PhysioNet's masks (the builder's study_blood_ml: 050 small,
  # 053 large); as published each bin's positives pair with as many of the one blood-free study.
  bins = {s: str(size_bin(v)) for s, v in _study_ml(config.dataset, "fold4").items()}
  assert sorted(bins.values()) == ["large", "none", "small"]
  negatives = list(bins.values()).count("none")
  published, balanced = t2["published"]["rows"]["All ICH"], t2["balanced"]["rows"]["All ICH"]
  for b in SIZE_BINS:
    n = list(bins.values()).count(b)
    assert published[b]["n_positive"] == min(n, negatives) and published[b]["n_negative"] == min(n, negatives)
    assert (published[b]["auc"] is not None) == (n > 0)
    assert balanced[b]["n_positive"] <= n and (balanced[b]["auc"] is not None) == (balanced[b]["n_positive"] > 0)
  assert published["all"]["auc"] is not None and balanced["all"]["auc"] is not None
  assert t2["full"]["All ICH"]["auc"] is not None
  report = (root / "report.md").read_text()
  assert "## Seed 001 Table 2 (as published" in report and "## Seed 001 Table 2, all negatives" in report
