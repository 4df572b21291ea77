"""An evaluation's files: metrics.json, report.md, predictions.npz and .csv, the tables' CSVs and the figures.

Used by `launch.py --mode eval` (and after training) on the model's own
predictions (`write_evaluation`), by an experiment's host steps on predictions
they combined (seed 003's fold means and backbone ensemble, seed 002's threshold
baseline), and by `python -m ich_jax.eval` on exported prediction files
(`write_report`), so any run, or any other system's CSV, gets the same tables.
Every file is written atomically (ich_jax.atomic): a reader never sees half a file.
"""
from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping

import numpy as np

from ich_jax import LABELS, atomic
from ich_jax.eval import metrics as M
from ich_jax.eval.classification import binary_labels, classification_metrics, scan_max
from ich_jax.eval.formatting import number
from ich_jax.eval.prediction_files import write_predictions_csv
from ich_jax.eval.report_text import format_markdown, format_table
from ich_jax.eval.volumes import series_volumes, volume_metrics
from ich_jax.jsonable import jsonable


def write_metrics(m: Mapping, path: str | pathlib.Path) -> None:
  """metrics.json (NaN as null, keys sorted), atomically."""
  atomic.write_text(path, json.dumps(jsonable(dict(m)), indent=2, sort_keys=True))


def read_metrics(workdir) -> dict:
  """metrics.json of an evaluation in `workdir` (`write_evaluation`: a run's, or an experiment stage's)."""
  path = pathlib.Path(workdir) / "metrics.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: the stage has no evaluation yet (run the experiment to the end)")
  return json.loads(path.read_text())


def write_text(path: pathlib.Path, text: str) -> None:
  """`text` at `path`, atomically."""
  atomic.write_text(path, text)


def write_report(m: dict, preds: Mapping[str, np.ndarray], out_dir: str | pathlib.Path, *,
                 compare: Mapping[str, np.ndarray] | None = None, figures: bool = True,
                 title: str = "Evaluation report") -> dict:
  """Adds volume metrics to `m` and writes metrics.json, report.md, difficult_scans.csv, volumes.csv, PNGs.

  Returns `m` (with the "volumes" entry when the predictions carry masks).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  table = series_volumes(preds)
  if table is not None:
    m["volumes"] = volume_metrics(preds)
    with atomic.open_write(out_dir / "volumes.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(list(table))
      w.writerows(zip(*[[v if isinstance(v, str) else format(v, ".6g") for v in col.tolist()]
                        for col in table.values()]))
  if "difficult_scans" in m:
    study = np.asarray(preds["study_id"])
    ids, scan_prob = M.scan_scores(np.asarray(preds["probabilities"], np.float64)[:, 0], study)
    scan_label = scan_max(binary_labels(preds)[:, 0], study) > 0.5
    d = m["difficult_scans"]
    hard = M.difficult_cases(scan_label, scan_prob, d["pos_max"], d["neg_min"])
    with atomic.open_write(out_dir / "difficult_scans.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["study_id", "any", "prob_any"])
      w.writerows([str(i), int(l), format(p, ".6g")] for i, l, p in zip(ids[hard], scan_label[hard], scan_prob[hard]))
  names = _figures(preds, compare, m, out_dir, table) if figures else []
  write_metrics(m, out_dir / "metrics.json")
  write_text(out_dir / "report.md", format_markdown(m, title=title, figures=names))
  return m


def _figures(preds, compare, m, out_dir: pathlib.Path, volumes) -> list[str]:
  from ich_jax.eval import plots

  labels = binary_labels(preds)
  prob = np.asarray(preds["probabilities"], np.float64)
  study = np.asarray(preds["study_id"])
  other = None if compare is None else np.asarray(compare["probabilities"], np.float64)
  names = []
  for level in ("scan", "slice"):
    y = labels if level == "slice" else scan_max(labels, study) > 0.5
    p = prob if level == "slice" else scan_max(prob, study)
    curves = {name: M.roc_curve(y[:, c], p[:, c])[:2] for c, name in enumerate(LABELS)}
    points = {name: (1 - m[level][name]["specificity"], m[level][name]["sensitivity"]) for name in LABELS}
    dashed = None
    if other is not None:
      q = other if level == "slice" else scan_max(other, study)
      dashed = {name: M.roc_curve(y[:, c], q[:, c])[:2] for c, name in enumerate(LABELS)}
    path = plots.roc_figure(curves, out_dir / f"roc_{level}.png", points=points, dashed=dashed,
                            aucs={n: m[level][n]["auc"] for n in LABELS},
                            title=f"ROC, {level} level (operating point at {m['threshold']})",
                            dashed_label=m.get("comparison", {}).get("name_b", "compared"))
    names.append(path.name)
  if volumes is not None and volumes["reference_ml"].size:
    v = m["volumes"]
    iph = volumes["iph_reference_ml"] > 0
    pairs = {"ABC/2, all blood": (volumes["reference_ml"], volumes["abc2_ml"]),
             "ABC/2, intraparenchymal": (volumes["iph_reference_ml"][iph], volumes["iph_abc2_ml"][iph])}
    keys = ["abc2", "abc2_intraparenchymal"]
    if "predicted_ml" in volumes:
      pairs["predicted mask"] = (volumes["reference_ml"], volumes["predicted_ml"])
      keys.append("predicted")
    path = plots.volume_scatter(pairs, out_dir / "volumes.png",
                                stats=[f"r = {number(v[k]['pearson_r'])}" for k in keys],
                                reference_label=f"reference volume (mL, {v['reference']})")
    names.append(path.name)
  return names


def write_evaluation(preds: Mapping[str, np.ndarray], workdir: str | pathlib.Path, eval_config, *,
                     title: str, meta: Mapping | None = None, quiet: bool = False) -> dict:
  """Metrics, report.md, figures, predictions.npz and predictions.csv of per-slice `preds` in `workdir`.

  `eval_config`: `config.eval` (threshold, n_boot, bootstrap_seed, figures).
  `meta` (step, split, dataset, ...) is stored in the metrics. Labels must be
  known: a split with NaN labels (rsna_ich's unlabelled `test`) is an error,
  not a table of negatives.
  """
  workdir = pathlib.Path(workdir)
  labels = np.asarray(preds["labels"], np.float64) if "labels" in preds else None
  if labels is not None and np.isnan(labels).any():
    what = dict(meta or {}).get("split", "the evaluated split")
    raise ValueError(f"{workdir}: {what} has {int(np.isnan(labels).any(1).sum())} slices with NaN labels "
                     "(unlabelled, e.g. rsna_ich's stage_2_test); evaluate a labelled split "
                     "(config dataset.eval_split, e.g. 'validation')")
  metrics = classification_metrics(preds, threshold=eval_config.threshold, n_boot=int(eval_config.get("n_boot", 500)),
                                   seed=int(eval_config.get("bootstrap_seed", 0)))
  metrics.update(meta or {})
  write_report(metrics, preds, workdir, figures=eval_config.get("figures", True), title=title)
  arrays = {k: np.asarray(v) for k, v in preds.items()}
  with atomic.open_write(workdir / "predictions.npz", "wb") as f:
    np.savez(f, **{k: (v.astype(str) if v.dtype.kind in "OS" else v) for k, v in arrays.items()})
  write_predictions_csv(preds, workdir / "predictions.csv")
  if not quiet:
    print(format_table(metrics), flush=True)
    print(f"Report: {workdir / 'report.md'}", flush=True)
  return metrics
