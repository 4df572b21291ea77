"""Seed 000 §2.1, smoke variant: weak and strong runs of four classifiers and the Table 2 report."""
import json

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


def test_the_strong_arm_needs_masks():
  config = svw_config.get_config()
  config.dataset.name, config.dataset.config = "rsna_ich", "slices256"
  with pytest.raises(ValueError, match="rsna_ich/slices256 has no masks.*annotations"):
    experiments.stages(config, "/nonexistent")
  config.experiment.annotations = ("weak",)
  assert [s.name for s in experiments.stages(config, "/nonexistent")][:2] == ["densenet121/weak",
                                                                             "inception_resnet_v2/weak"]
