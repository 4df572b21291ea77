"""Reports from prediction files: the CSV format, the CLI, the tables' numbers, volumes from masks."""
import csv
import json

import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.eval import __main__ as cli
from ich_jax.eval import metrics as M
from ich_jax.eval import report

N_BOOT = 40


def _preds(seed=0, n_studies=24, n_slices=6, noise=1.0):
  """Studies of n_slices slices; half with blood on some slices, one subtype per study."""
  rng = np.random.default_rng(seed)
  rows = {"study_id": [], "series_id": [], "slice_index": [], "labels": [], "study_blood_ml": [], "mimic": []}
  volumes = [0.005, 2.0, 12.0, 40.0]
  for s in range(n_studies):
    bleed = s % 2 == 1
    subtype = 1 + (s // 2) % 5
    ml = volumes[(s // 2) % 4] if bleed else 0.0
    for k in range(n_slices):
      lab = np.zeros(6, np.float32)
      if bleed and 1 <= k <= 3:
        lab[0] = lab[subtype] = 1
      rows["study_id"].append(f"1.2.3.{s}")
      rows["series_id"].append(f"1.2.3.{s}.1")
      rows["slice_index"].append(k)
      rows["labels"].append(lab)
      rows["study_blood_ml"].append(ml)
      rows["mimic"].append(int(rng.random() < 0.2))
  out = {k: np.array(v) for k, v in rows.items()}
  out["labels"] = out["labels"].astype(np.float32)
  logits = 2.2 * out["labels"] - 1.2 + noise * rng.normal(size=out["labels"].shape)
  out["probabilities"] = (1 / (1 + np.exp(-logits))).astype(np.float32)
  out["slice_index"] = out["slice_index"].astype(np.int32)
  out["study_blood_ml"] = out["study_blood_ml"].astype(np.float32)
  return out


def _shuffle_rows(path, seed=0):
  def edit(rows):
    body = rows[1:]
    rows[1:] = [body[i] for i in np.random.default_rng(seed).permutation(len(body))]
  _rewrite_csv(path, edit)


def _rewrite_csv(path, edit):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  edit(rows)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(rows)


def test_csv_round_trip_is_exact(tmp_path):
  preds = _preds()
  preds[report.BASELINE_COLUMN] = np.linspace(0, 0.1, len(preds["labels"]))
  back = report.read_predictions(report.write_predictions_csv(preds, tmp_path / "p.csv"))
  assert set(back) == set(preds)
  for k, v in preds.items():
    np.testing.assert_array_equal(back[k].astype(v.dtype), v, err_msg=k)
  header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
  assert header[:9] == ["study_id", "series_id", "slice_index", "prob_any", "prob_epidural", "prob_intraparenchymal",
                        "prob_intraventricular", "prob_subarachnoid", "prob_subdural"]
  assert header[9:15] == list(LABELS)


def test_cli_on_csv_matches_in_memory_metrics_and_writes_report(tmp_path):
  preds = _preds()
  path = report.write_predictions_csv(preds, tmp_path / "run.csv")
  assert cli.main(["--predictions", str(path), "--n-boot", str(N_BOOT), "--seed", "3"]) == 0
  out = tmp_path / "run_eval"
  got = json.loads((out / "metrics.json").read_text())
  expected = report.classification_metrics(preds, n_boot=N_BOOT, seed=3)
  expected["source"] = str(path)
  assert got == report._jsonable(expected)
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


def test_table_numbers_from_first_principles():
  preds = _preds(seed=1)
  m = report.classification_metrics(preds, n_boot=N_BOOT, seed=0)
  y, p, study = preds["labels"] > 0.5, preds["probabilities"].astype(np.float64), preds["study_id"]
  ids = sorted(set(study))
  scan_y = np.array([[y[study == s, c].any() for c in range(6)] for s in ids])
  scan_p = np.array([[p[study == s, c].max() for c in range(6)] for s in ids])
  scan_ml = np.array([preds["study_blood_ml"][study == s][0] for s in ids])
  assert m["n_scans"] == len(ids) and m["n_positive_scans"] == scan_y[:, 0].sum()
  for c, name in enumerate(LABELS):
    assert m["scan"][name]["auc"] == pytest.approx(M.roc_auc(scan_y[:, c], scan_p[:, c]))
    assert m["slice"][name]["sensitivity"] == pytest.approx((p[y[:, c], c] >= 0.5).mean())
  # Slice-level intervals resample whole studies; scan-level ones resample scans.
  lo_hi = M.bootstrap_ci(M.roc_auc, y[:, 0], p[:, 0], n_boot=N_BOOT, seed=0, groups=study)[1:]
  assert m["slice"]["any"]["auc_ci"] == pytest.approx(list(lo_hi))
  lo_hi = M.bootstrap_ci(M.roc_auc, scan_y[:, 0], scan_p[:, 0], n_boot=N_BOOT, seed=0)[1:]
  assert m["scan"]["any"]["auc_ci"] == pytest.approx(list(lo_hi))
  # Seed 001 Table 2: large bleeds (> 25 mL) against hemorrhage-free scans only.
  large = scan_y[:, 0] & (scan_ml > 25)
  keep = large | ~scan_y[:, 0]
  row = m["strata"]["scan"]["any"]["large"]
  assert row["n_positive"] == large.sum() > 0
  assert row["auc"] == pytest.approx(M.roc_auc(large[keep], scan_p[keep, 0]))
  assert m["size_bins_any"]["large"]["scan"]["auc"] == row["auc"]
  # Subtype rows: the subtype's positives vs scans with no blood at all (not vs other subtypes).
  sub = m["strata"]["scan"]["subdural"]["all"]
  pos = scan_y[:, 5]
  assert sub["n_negative"] == (~scan_y[:, 0]).sum()
  assert sub["auc"] == pytest.approx(M.roc_auc(pos[pos | ~scan_y[:, 0]], scan_p[pos | ~scan_y[:, 0], 5]))
  sweep = {r["threshold"]: r for r in m["threshold_sweep_any"]["slice"]}
  assert list(sweep) == [0.5, 0.6, 0.7, 0.8, 0.9]
  assert sweep[0.7]["specificity"] == pytest.approx((p[~y[:, 0], 0] < 0.7).mean())
  assert sweep[0.9]["accuracy"] == pytest.approx(((p[:, 0] >= 0.9) == y[:, 0]).mean())
  hard = (scan_y[:, 0] & (scan_p[:, 0] <= 0.6)) | (~scan_y[:, 0] & (scan_p[:, 0] >= 0.4))
  assert m["difficult_scans"]["n"] == hard.sum()
  mimic_neg = (preds["mimic"] > 0) & ~y[:, 0]
  assert m["mimic_negative_slices"]["false_positive_rate"] == pytest.approx((p[mimic_neg, 0] >= 0.5).mean())


def test_labels_csv_joined_on_ids_in_any_order(tmp_path):
  preds = _preds(seed=2)
  inline = report.classification_metrics(preds, n_boot=N_BOOT)
  bare = {k: v for k, v in preds.items() if k not in ("labels", "study_blood_ml", "mimic")}
  pred_path = report.write_predictions_csv(bare, tmp_path / "p.csv")
  labels_path = report.write_predictions_csv(preds, tmp_path / "full.csv")
  _shuffle_rows(labels_path)
  _rewrite_csv(labels_path, lambda rows: rows.__setitem__(slice(None), [r[:3] + r[9:] for r in rows]))
  assert cli.main(["--predictions", str(pred_path), "--labels", str(labels_path), "--n-boot", str(N_BOOT),
                   "--out", str(tmp_path / "o"), "--no-figures"]) == 0
  got = json.loads((tmp_path / "o" / "metrics.json").read_text())
  got.pop("source")
  assert got == report._jsonable(inline)
  assert not (tmp_path / "o" / "roc_scan.png").exists()


def test_bad_inputs_name_the_column_line_and_value(tmp_path, capsys):
  path = report.write_predictions_csv(_preds(), tmp_path / "p.csv")
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
    _rewrite_csv(bad, edit)
    with pytest.raises(ValueError, match=message):
      report.read_predictions(bad)
    assert cli.main(["--predictions", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
  # Labels that miss a prediction row, or carry one too many.
  preds = _preds()
  short = {k: v[1:] for k, v in preds.items()}
  with pytest.raises(ValueError, match=r"1 row\(s\) of predictions have no row in labels, first study_id='1.2.3.0'"):
    report.attach_labels(preds, short)
  with pytest.raises(ValueError, match=r"1 row\(s\) of labels have no row in predictions"):
    report.attach_labels(short, preds)
  no_labels = {k: v for k, v in preds.items() if k != "labels"}
  with pytest.raises(ValueError, match=r"no labels.*--labels"):
    report.classification_metrics(no_labels, n_boot=0)


def test_compare_two_prediction_sets_with_delong(tmp_path):
  a, b = _preds(seed=4, n_studies=40), _preds(seed=5, n_studies=40, noise=2.5)
  path_a = report.write_predictions_csv(a, tmp_path / "model_a.csv")
  path_b = report.write_predictions_csv(b, tmp_path / "model_b.csv")
  _shuffle_rows(path_b)  # the same slices in another order
  assert cli.main(["--predictions", str(path_a), "--compare", str(path_b), "--n-boot", "0",
                   "--out", str(tmp_path / "o")]) == 0
  m = json.loads((tmp_path / "o" / "metrics.json").read_text())
  study = a["study_id"]
  _, scan_y = M.scan_scores(a["labels"][:, 0], study)
  _, scan_a = M.scan_scores(a["probabilities"][:, 0], study)
  _, scan_b = M.scan_scores(b["probabilities"][:, 0], study)
  want = M.delong_test(scan_y, scan_a, scan_b)
  got = m["comparison"]["scan"]["any"]
  assert (m["comparison"]["name_a"], m["comparison"]["name_b"]) == ("model_a", "model_b")
  assert got["auc_a"] == pytest.approx(want["auc_a"]) and got["p_value"] == pytest.approx(want["p_value"])
  assert got["auc_a"] > got["auc_b"] and got["z"] > 0
  slice_want = M.delong_test(a["labels"][:, 3], a["probabilities"][:, 3], b["probabilities"][:, 3])
  assert m["comparison"]["slice"]["intraventricular"]["z"] == pytest.approx(slice_want["z"])
  md = (tmp_path / "o" / "report.md").read_text()
  assert "## Comparison: model_a vs model_b (DeLong test, two-sided)" in md
  assert "not computed (n_boot = 0)" in md
  other = _preds(seed=5, n_studies=39)
  with pytest.raises(ValueError, match="have no row in compare"):
    report.align(a, other)


def _mask_preds():
  """Two series on a 64×64 grid: an intraparenchymal ellipsoid and a subdural slab, plus a blood-free one."""
  spacing_xy, gap = 0.8, 2.5
  z, yy, xx = np.meshgrid((np.arange(12) - 5.5) * gap, (np.arange(64) - 31.5) * spacing_xy,
                          (np.arange(64) - 31.5) * spacing_xy, indexing="ij")
  iph = ((z / 10) ** 2 + (yy / 14) ** 2 + (xx / 9) ** 2 <= 1).astype(np.uint8) * LABELS.index("intraparenchymal")
  sdh = np.zeros_like(iph)
  sdh[3:7, 5:40, 2:6] = LABELS.index("subdural")
  none = np.zeros_like(iph)
  masks = np.concatenate([iph, sdh, none])
  n = len(masks)
  series = np.repeat(["A", "B", "C"], 12)
  order = np.random.default_rng(0).permutation(n)  # rows in no particular order
  pred_mask = masks.copy()
  pred_mask[12:24] = 0  # the subdural slab is missed
  pred_mask[30, 10:12, 10:12] = 1  # a false positive in the blood-free series: not a slice with blood
  labels = np.zeros((n, 6), np.float32)
  labels[:, 0] = masks.reshape(n, -1).max(1) > 0
  for k in range(1, 6):
    labels[:, k] = (masks == k).reshape(n, -1).any(1)
  preds = {"study_id": np.char.add("st", series), "series_id": series,
           "slice_index": np.tile(np.arange(12), 3).astype(np.int32),
           "z_position": np.tile(np.arange(12) * gap + 100.0, 3).astype(np.float32),
           "slice_thickness": np.full(n, 5.0, np.float32),  # thicker than the gap: volumes use the gap
           "pixel_spacing": np.full((n, 2), spacing_xy, np.float32), "mask": masks, "pred_mask": pred_mask,
           "labels": labels, "probabilities": np.clip(labels * 0.8 + 0.1, 0, 1)}
  return {k: v[order] for k, v in preds.items()}, {"A": iph, "B": sdh}, (gap, spacing_xy, spacing_xy)


def test_volumes_dice_and_abc2_from_masks(tmp_path):
  preds, truth, spacing = _mask_preds()
  table = report.series_volumes(preds)
  assert list(table["series_id"]) == ["A", "B"]  # C has no blood
  np.testing.assert_allclose(table["reference_ml"], [M.volume_ml(truth["A"], spacing), M.volume_ml(truth["B"], spacing)])
  np.testing.assert_allclose(table["abc2_ml"], [M.abc2_ml(truth["A"], spacing), M.abc2_ml(truth["B"], spacing)])
  np.testing.assert_allclose(table["iph_reference_ml"], [table["reference_ml"][0], 0])
  np.testing.assert_allclose(table["predicted_ml"], [table["reference_ml"][0], 0])
  v = report.volume_metrics(preds)
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
