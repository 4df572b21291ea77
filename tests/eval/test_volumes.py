"""Volumes from masks: reference, ABC/2 and predicted volumes, Dice per subtype and on slices with blood."""
import csv
import json

import numpy as np
import pytest

from ich_jax.eval import __main__ as cli
from ich_jax.eval import metrics as M
from ich_jax.eval import volumes
from tests.eval import fake_predictions as fake


def test_volumes_dice_and_abc2_from_masks(tmp_path):
  preds, truth, spacing = fake.mask_preds()
  table = volumes.series_volumes(preds)
  assert list(table["series_id"]) == ["A", "B"]  # C has no blood
  np.testing.assert_allclose(table["reference_ml"], [M.volume_ml(truth["A"], spacing), M.volume_ml(truth["B"], spacing)])
  np.testing.assert_allclose(table["abc2_ml"], [M.abc2_ml(truth["A"], spacing), M.abc2_ml(truth["B"], spacing)])
  np.testing.assert_allclose(table["iph_reference_ml"], [table["reference_ml"][0], 0])
  np.testing.assert_allclose(table["predicted_ml"], [table["reference_ml"][0], 0])
  v = volumes.volume_metrics(preds)
  assert v["abc2"]["n"] == 2 and v["abc2_intraparenchymal"]["n"] == 1
  err = table["abc2_ml"] - table["reference_ml"]
  assert v["abc2"]["mean_error_ml"] == pytest.approx(err.mean())
  assert v["abc2"]["mean_relative_error"] == pytest.approx((err / table["reference_ml"]).mean())
  assert v["predicted"]["mean_error_ml"] == pytest.approx(-table["reference_ml"][1] / 2)
  assert v["dice"]["intraparenchymal"] == {"n_series": 1, "dice": 1.0}
  assert v["dice"]["subdural"] == {"n_series": 1, "dice": 0.0}
  assert v["dice"]["any"]["dice"] == pytest.approx(0.5) and np.isnan(v["dice"]["epidural"]["dice"])
  # Slices with blood only: 4 missed subdural slices score 0, the ellipsoid's slices 1.
  n_iph = int((truth["A"].reshape(12, -1).max(1) > 0).sum())
  assert v["dice"]["slices_with_blood"]["n_slices"] == n_iph + 4
  assert v["dice"]["slices_with_blood"]["dice"] == pytest.approx(n_iph / (n_iph + 4))
  # Through the CLI from a run's predictions.npz.
  np.savez(tmp_path / "predictions.npz", **preds)
  assert cli.main(["--predictions", str(tmp_path / "predictions.npz"), "--n-boot", "0"]) == 0
  out = tmp_path / "predictions_eval"
  assert (out / "volumes.png").read_bytes()[:4] == b"\x89PNG"
  rows = list(csv.DictReader((out / "volumes.csv").read_text().splitlines()))
  assert [r["series_id"] for r in rows] == ["A", "B"] and rows[0]["subtypes"] == "intraparenchymal"
  md = (out / "report.md").read_text()
  assert "| ABC/2, intraparenchymal | 1 |" in md and "| Predicted mask | 2 |" in md
  assert json.loads((out / "metrics.json").read_text())["volumes"]["dice"]["subdural"]["dice"] == 0.0
