"""Prediction files: the CSV format read and written exactly, labels joined on ids, bad inputs named."""
import json

import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import __main__ as cli
from ich_jax.eval import classification, prediction_files
from ich_jax.jsonable import jsonable
from tests.eval import fake_predictions as fake


def test_csv_round_trip_is_exact(tmp_path):
  preds = fake.preds()
  preds[prediction_files.BASELINE_COLUMN] = np.linspace(0, 0.1, len(preds["labels"]))
  back = prediction_files.read_predictions(prediction_files.write_predictions_csv(preds, tmp_path / "p.csv"))
  assert set(back) == set(preds)
  for k, v in preds.items():
    np.testing.assert_array_equal(back[k].astype(v.dtype), v, err_msg=k)
  header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
  assert header[:9] == ["study_id", "series_id", "slice_index", "prob_any", "prob_epidural", "prob_intraparenchymal",
                        "prob_intraventricular", "prob_subarachnoid", "prob_subdural"]
  assert header[9:15] == list(LABELS)


def test_labels_csv_joined_on_ids_in_any_order(tmp_path):
  preds = fake.preds(seed=2)
  inline = classification.classification_metrics(preds, n_boot=fake.N_BOOT)
  bare = {k: v for k, v in preds.items() if k not in ("labels", "study_blood_ml", "mimic")}
  pred_path = prediction_files.write_predictions_csv(bare, tmp_path / "p.csv")
  labels_path = prediction_files.write_predictions_csv(preds, tmp_path / "full.csv")
  fake.shuffle_rows(labels_path)
  fake.rewrite_csv(labels_path, lambda rows: rows.__setitem__(slice(None), [r[:3] + r[9:] for r in rows]))
  assert cli.main(["--predictions", str(pred_path), "--labels", str(labels_path), "--n-boot", str(fake.N_BOOT),
                   "--out", str(tmp_path / "o"), "--no-figures"]) == 0
  got = json.loads((tmp_path / "o" / "metrics.json").read_text())
  got.pop("source")
  assert got == jsonable(inline)
  assert not (tmp_path / "o" / "roc_scan.png").exists()


def test_bad_inputs_name_the_column_line_and_value(tmp_path, capsys):
  path = prediction_files.write_predictions_csv(fake.preds(), tmp_path / "p.csv")
  cases = [
      (lambda rows: rows[4].__setitem__(8, "nan"), r"column 'prob_subdural' line 5: 'nan' is not finite"),
      (lambda rows: rows[2].__setitem__(3, "1.5"), r"column 'prob_any' line 3: 1.5 is not a probability"),
      (lambda rows: rows[7].__setitem__(3, "high"), r"column 'prob_any' line 8: 'high' is not a number"),
      (lambda rows: rows[3].__setitem__(10, "2"), r"column 'epidural' line 4: '2' is not 0 or 1"),
      (lambda rows: rows[2].__setitem__(2, rows[1][2]), r"slice_index=0 appears 2 times"),
      (lambda rows: [r.pop(4) for r in rows], r"missing column\(s\) \['prob_epidural'\]"),
      (lambda rows: rows[5].pop(), r"line 6 has 16 fields, the header 17"),
  ]
  for edit, message in cases:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(path.read_bytes())
    fake.rewrite_csv(bad, edit)
    with pytest.raises(ValueError, match=message):
      prediction_files.read_predictions(bad)
    assert cli.main(["--predictions", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
  # Labels that miss a prediction row, or carry one too many.
  preds = fake.preds()
  short = {k: v[1:] for k, v in preds.items()}
  with pytest.raises(ValueError, match=r"1 row\(s\) of predictions have no row in labels, first study_id='1.2.3.0'"):
    prediction_files.attach_labels(preds, short)
  with pytest.raises(ValueError, match=r"1 row\(s\) of labels have no row in predictions"):
    prediction_files.attach_labels(short, preds)
  no_labels = {k: v for k, v in preds.items() if k != "labels"}
  with pytest.raises(ValueError, match=r"no labels.*--labels"):
    classification.classification_metrics(no_labels, n_boot=0)
