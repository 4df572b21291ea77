"""Seed 000 §2.1, smoke variant: weak and strong runs of four classifiers and the Table 2 report."""
import json

import numpy as np
import pytest

from configs import strong_vs_weak as svw_config
from ich_jax import experiments
from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files
from ich_jax.eval.formatting import MISSING
from ich_jax.experiments import strong_vs_weak

BACKBONES = ("densenet121", "inception_resnet_v2", "mobilenet_v2", "vgg19")


def test_each_run_leaves_a_standard_workdir_and_only_strong_runs_learn_from_masks(svw):
  _, root = svw
  for b in BACKBONES:
    for a in ("weak", "strong"):
      d = root / b / a
      assert {"predictions.csv", "metrics.json", "report.md", "config.json"} <= {p.name for p in d.iterdir()}
      preds = prediction_files.read_predictions(d / "predictions.csv")
      assert preds["probabilities"].shape == (64, 6) and preds["labels"].shape == (64, 6)
      logged = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
      assert all(("saliency_loss" in row) == (a == "strong") for row in logged)
      config = json.loads((d / "config.json").read_text())
      assert config["data"]["sampling"]["mode"] == "balanced"
      assert config["data"]["recipe"][3] == [0, 40, 80, "skull_stripped"]   # seed 000 §2.1.4's fourth channel
      assert config["task"]["saliency_loss_weight"] == (1.0 if a == "strong" else 0.0)


def test_table2_is_complete_and_computed_from_the_runs_predictions(svw):
  config, root = svw
  text = (root / "report.md").read_text()
  t2 = json.loads((root / "metrics.json").read_text())["table2"]
  for level in ("slice", "scan"):
    section = text.split(f"## Table 2, {level} level")[1].split("## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "Annotation" not in line]
    assert len(table) == 8
    for line in table:
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert all(cells[:6]) and MISSING not in cells[:6] and bool(cells[6]) == (cells[1] == "strong"), line
  # One backbone's row, recomputed from its two predictions.csv files.
  weak, strong = (prediction_files.read_predictions(root / "mobilenet_v2" / a / "predictions.csv") for a in ("weak", "strong"))
  ids, p_strong = M.scan_scores(strong["probabilities"][:, 0], strong["study_id"])
  _, p_weak = M.scan_scores(weak["probabilities"][:, 0], weak["study_id"])
  _, y = M.scan_scores(strong["labels"][:, 0], strong["study_id"])
  row = t2["scan"]["mobilenet_v2"]
  assert row["strong"]["auc"] == pytest.approx(M.roc_auc(y > 0.5, p_strong))
  assert row["strong"]["accuracy"] == pytest.approx(M.binary_stats(y > 0.5, p_strong, 0.5)["accuracy"])
  assert row["delong_strong_vs_weak"]["p_value"] == pytest.approx(M.delong_test(y > 0.5, p_strong, p_weak)["p_value"])
  acc = strong_vs_weak.accuracy_ci(strong["labels"][:, 0] > 0.5, strong["probabilities"][:, 0], 0.5, n_boot=50,
                                   seed=0, groups=strong["study_id"])
  assert t2["slice"]["mobilenet_v2"]["strong"]["accuracy_ci"] == pytest.approx(list(acc[1:]))
  assert acc[1] <= acc[0] <= acc[2]


def test_external_cq500_column_from_majority_reads_with_n_a_where_cq500_cannot_say(svw, cq500_fixture):
  """Seed 000 §2.1.3 on an external set: every run on a CQ500 build (scan-level majority of three readers)."""
  config, root = svw
  ext = root / "external"
  t = json.loads((ext / "metrics.json").read_text())
  assert t["sets"] == ["cq500.test"] and t["table_model"] is None
  assert t["pairs"] == {f"{b}/strong": f"{b}/weak" for b in BACKBONES}
  # Each run's predictions on the set carry the builder's majority labels, the same on every slice of a scan.
  preds = prediction_files.read_predictions(ext / "cq500.test" / "vgg19_strong.csv")
  ids, y = M.scan_scores(preds["labels"], preds["study_id"])
  built = sorted(cq500_fixture.selected)       # the scans with a folder and a reads.csv row
  expected = sorted(tuple(cq500_fixture.labels[n].tolist()) for n in built)
  assert len(ids) == len(built) == 2 and sorted(map(tuple, y.tolist())) == expected
  # Scan-level statistics recomputed from that file; slice level does not exist for scan-level labels.
  r = t["results"]["cq500.test"]["vgg19/strong"]
  _, p = M.scan_scores(preds["probabilities"], preds["study_id"])
  assert r["scan"]["any"]["auc"] == pytest.approx(M.roc_auc(y[:, 0] > 0.5, p[:, 0]))
  assert r["slice"] is None and r["scan"]["intraventricular"]["auc"] is None   # no IVH in the fixture
  weak = prediction_files.read_predictions(ext / "cq500.test" / "vgg19_weak.csv")
  _, q = M.scan_scores(weak["probabilities"], weak["study_id"])
  test = t["delong"]["cq500.test"]["vgg19/strong"]["any"]
  want = M.delong_test(y[:, 0] > 0.5, p[:, 0], q[:, 0])
  assert [np.nan if test[k] is None else test[k] for k in ("auc_a", "auc_b", "p_value")] == pytest.approx(
      [want["auc_a"], want["auc_b"], want["p_value"]], nan_ok=True)
  # Fleiss' kappa of the three readers, per class, from the reads the builder kept.
  reads = np.stack([cq500_fixture.reads[n] for n in built])
  a = t["reader_agreement"]["cq500.test"]
  assert (a["n_scans"], a["n_readers"]) == (2, 3)
  assert a["fleiss_kappa"]["any"] == pytest.approx(M.fleiss_kappa(reads[:, :, 0] > 0.5))
  assert a["not_unanimous_any"] == int(sum(0 < r[:, 0].sum() < 3 for r in reads))
  text = (ext / "report.md").read_text()
  row = next(line for line in text.splitlines() if line.startswith("| vgg19/strong |"))
  assert "vs vgg19/weak" in row and "Fleiss" in text


def test_the_strong_arm_needs_masks():
  config = svw_config.get_config()
  config.dataset.name, config.dataset.config = "rsna_ich", "slices256"
  with pytest.raises(ValueError, match="rsna_ich/slices256 has no masks.*annotations"):
    experiments.stages(config, "/nonexistent")
  config.experiment.annotations = ("weak",)
  # The full config's external set is phantoms: refused for a model trained on real data, naming the fix.
  with pytest.raises(ValueError, match="names the phantoms .*rsna_ich.*external=''"):
    experiments.stages(config, "/nonexistent")
  config.experiment.external = ""
  assert [s.name for s in experiments.stages(config, "/nonexistent")][:2] == ["densenet121/weak",
                                                                             "inception_resnet_v2/weak"]
