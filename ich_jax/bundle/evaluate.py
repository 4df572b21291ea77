"""A bundle scored on any builder's split: the external test of an exported model, outside its experiment.

  python -m ich_jax.bundle evaluate --model bundles/rsna_cascade --dataset cq500/slices256:test \\
      --manual-dir /data/cq500 --out eval/cascade_cq500

The set ("name/config:split", `ich_jax.data.external`) is built on first use
from `--manual-dir` into `--data-dir`, read through its own builder (series
choice, geometry, HU), and every series goes through the bundle as a study
would in `ich_jax.predict`: the bundle's own preprocessing, every member, the
combined probabilities. The output folder holds `predictions.csv` (the
`python -m ich_jax.eval` format, with the set's labels), `report.md` and
`metrics.json`: seed 003's Table 4 for this one model and set, with the same
statistics as an experiment's `external` stage (n/a for what the set cannot
say, e.g. CQ500's slice level), and Fleiss' kappa where the set has several
readers.
"""
from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from ich_jax import atomic
from ich_jax.bundle.engine import load
from ich_jax.data import datasets, external, folds, series_index
from ich_jax.eval import external_tables, prediction_files, report

KIND = "external_evaluation"
_IDS = ("study_id", "series_id", "patient_id")


def predict_split(bundle, source, *, batch_size: int = 32) -> dict[str, np.ndarray]:
  """Per-slice rows of every series of `source` (slice records) through `bundle`, series by series."""
  src = series_index.as_series_source(source)
  rows: dict[str, list] = {k: [] for k in (*_IDS, "slice_index", "z_position", "labels", "probabilities")}
  for _, (_, record_ids) in sorted(src.index.items()):
    records = [src[int(i)] for i in record_ids]
    z = np.asarray([float(r["z_position"]) for r in records], np.float32)
    out = bundle.predict(bundle.preprocess(records), z, batch_size=batch_size)
    rows["probabilities"].append(out["probabilities"])
    for r in records:
      for k in _IDS:
        rows[k].append(r.get(k, r["study_id"]))
      rows["slice_index"].append(int(r["slice_index"]))
      rows["z_position"].append(float(r["z_position"]))
      rows["labels"].append(np.asarray(r["labels"], np.float32))
  if not rows["probabilities"]:
    raise ValueError("the split holds no slices")
  out = {k: (folds.as_text(v) if k in _IDS else np.asarray(v)) for k, v in rows.items() if k != "probabilities"}
  out["probabilities"] = np.concatenate(rows["probabilities"]).astype(np.float32)
  return out


def evaluate(model, dataset: str, out, *, data_dir: str = "data/tfds", manual_dir: str = "",
             threshold: float | None = None, n_boot: int = 500, seed: int = 0, batch_size: int = 32) -> dict:
  """Scores bundle `model` on `dataset` ("name/config:split"); writes `out` atomically; returns the metrics."""
  base = ml_collections.ConfigDict({"name": "", "config": "slices256", "data_dir": data_dir, "manual_dir": ""})
  (s,) = external.parse([dataset], base, {dataset.split("/")[0].split(":")[0]: manual_dir})
  out = atomic.check_output(out, KIND, inputs=[model])
  bundle = load(model)
  ds = external.dataset_config(base, s)
  datasets.ensure_built(ds)
  rows = predict_split(bundle, datasets.open_split(ds, s.split), batch_size=batch_size)
  threshold = bundle.threshold if threshold is None else float(threshold)
  name = f"bundle {bundle.hash[:12]}"
  metrics = external_tables.set_metrics(rows, scan_level_labels=external.scan_level(s.name), threshold=threshold,
                                        n_boot=n_boot, seed=seed)
  readers = external.reader_labels(base, s)
  agreement = None if readers is None else external_tables.reader_agreement(readers)
  t = external_tables.external_tables({s.key: {name: metrics}}, {s.key: {}}, {}, name, {s.key: agreement})
  t.update({"bundle": str(pathlib.Path(model).absolute()), "bundle_sha256": bundle.hash, "set": s.as_dict()})
  text = "\n".join([f"# {model} on {s.label}", "",
                    external_tables.format_markdown(t, labels={s.key: s.label}, threshold=threshold, n_boot=n_boot,
                                                    models=[name])])
  tmp = atomic.begin(out, KIND, bundle_sha256=bundle.hash, dataset=s.label)
  try:
    prediction_files.write_predictions_csv(rows, tmp / "predictions.csv", extra_columns=("patient_id", "z_position"))
    report.write_text(tmp / "report.md", text)
    report.write_metrics(t, tmp / "metrics.json")
    atomic.commit(tmp, out)
  except BaseException:
    atomic.abandon(tmp)
    raise
  print(text, flush=True)
  return t
