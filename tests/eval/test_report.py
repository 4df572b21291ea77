"""An evaluation's files through the CLI: metrics.json as computed in memory, report.md's tables, the CSVs."""
import csv
import json

from ich_jax.eval import __main__ as cli
from ich_jax.eval import classification, prediction_files
from ich_jax.jsonable import jsonable
from tests.eval import fake_predictions as fake


def test_cli_on_csv_matches_in_memory_metrics_and_writes_report(tmp_path):
  preds = fake.preds()
  path = prediction_files.write_predictions_csv(preds, tmp_path / "run.csv")
  assert cli.main(["--predictions", str(path), "--n-boot", str(fake.N_BOOT), "--seed", "3"]) == 0
  out = tmp_path / "run_eval"
  got = json.loads((out / "metrics.json").read_text())
  expected = classification.classification_metrics(preds, n_boot=fake.N_BOOT, seed=3)
  expected["source"] = str(path)
  assert got == jsonable(expected)
  for name in ("report.md", "roc_scan.png", "roc_slice.png", "difficult_scans.csv"):
    assert (out / name).stat().st_size > 0, name
  assert (out / "roc_scan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (out / "volumes.png").exists()  # no masks in a CSV
  md = (out / "report.md").read_text()
  e = got["scan"]["any"]
  assert f"| any | {e['n_positive']}/{e['n_negative']} | {e['auc']:.3f} [{e['auc_ci'][0]:.3f}–{e['auc_ci'][1]:.3f}] |" in md
  assert "## Threshold sweep, any hemorrhage" in md and "seed 002, Table 6" in md
  hard = list(csv.DictReader((out / "difficult_scans.csv").read_text().splitlines()))
  assert len(hard) == got["difficult_scans"]["n"]
  assert all((r["any"] == "1" and float(r["prob_any"]) <= 0.6) or (r["any"] == "0" and float(r["prob_any"]) >= 0.4)
             for r in hard)
