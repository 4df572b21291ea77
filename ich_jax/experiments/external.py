"""External test sets in an experiment: every model exports each set, one host stage scores them side by side.

`config.experiment.external` names the sets ("cq500:test,physionet_ct_ich:fold0+...+fold4":
`ich_jax.data.external`), `config.experiment.external_manual_dir.<name>` their downloads. An experiment
  - adds the sets to the exports of the loop runs that make its models (`export_stage_config`): each run
    writes `export/<key>/` through the set's own builder, and a combined stage (fold means, ensembles)
    combines `export/<key>/` as it combines its evaluated split;
  - ends with the stage `external` (`stage`): `W/external/report.md` and `metrics.json` (seed 003 Table 4
    with one column per set, every model's AUC with DeLong's p against its partner on the same studies,
    inter-reader agreement where a set has several readers) and each model's predictions on each set as `W/external/<key>/<model>.csv`
    (the `python -m ich_jax.eval` format).
With no set named, nothing changes: no stage is added and no stage's fingerprint moves.
"""
from __future__ import annotations

import functools
import pathlib
import re

from ich_jax.data import datasets, external, stacking, stage_exports
from ich_jax.eval import external_tables, prediction_files, report
from ich_jax.experiments.runner import Stage

STAGE = "external"


PHANTOMS = "synthetic_ich"


def sets(config) -> list[external.ExternalSet]:
  """The experiment's external sets (none when `experiment.external` is absent or empty), checked before any
  stage runs: a real set needs its download (or a finished build), and phantoms are no external set of a
  model trained on real data (the full configs' phantom default is for runs on the phantoms)."""
  e = config.experiment
  out = external.parse(e.get("external", ()), config.dataset, e.get("external_manual_dir", None))
  for s in out:
    if s.name == PHANTOMS and config.dataset.name != PHANTOMS:
      raise ValueError(f"config experiment.external names the phantoms ({s.label}) for a model trained on "
                       f"{config.dataset.name}: name real sets, e.g. --config.experiment.external="
                       "cq500:test,physionet_ct_ich:fold0+fold1+fold2+fold3+fold4, or none: "
                       "--config.experiment.external=''")
    if s.name != PHANTOMS and not s.manual_dir and not datasets.builder(
        external.dataset_config(config.dataset, s)).is_prepared():
      raise ValueError(f"config experiment.external names {s.label}, which is not built in "
                       f"{datasets.data_dir(config.dataset)}: give its download with "
                       f"--config.experiment.external_manual_dir.{s.name}=DIR")
  return out


def export_stage_config(c, test_sets) -> None:
  """Adds the sets to loop config `c`'s exports (in place); nothing without sets (fingerprints unchanged)."""
  if not test_sets:
    return
  if c.get("data") is not None and c.data.get("intensity") == "dicom_window":
    # Seed 003's public-code input needs every slice's header window; a set stored without one (PhysioNet's
    # NIfTI volumes, the phantoms) would fail only when its export comes, after training.
    lacking = [s.label for s in test_sets if not external.has_feature(c.dataset, s, "dicom_window")]
    if lacking:
      raise ValueError(f"config data.intensity='dicom_window' reads each slice's DICOM header window, which "
                       f"external set(s) {', '.join(lacking)} do not store: drop them from experiment.external, "
                       "or use data.intensity='window'")
  with c.unlocked():
    if c.get("export") is None:
      c.export = {"splits": []}
    c.export.external = [s.as_dict() for s in test_sets]


def combine(workdir: pathlib.Path, parts, test_sets) -> None:
  """A combined stage's export of each set: the mean over `parts` (fold models, backbones), as its eval split."""
  for s in test_sets:
    stacking.mean_over_models([stage_exports.export_dir(d, s.key) for d in parts],
                              stage_exports.export_dir(workdir, s.key))


def _file_name(model: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_") + ".csv"


def run_stage(workdir: pathlib.Path, *, models: dict, pairs: dict, table_model: str | None, test_sets: list,
              dataset_config, eval_config) -> None:
  """Scores every model's export of every set (`models`: {name: stage folder}); DeLong's test of each model in
  `pairs` against its partner; seed 003 Table 4 of `table_model`; writes the report."""
  test_sets = external.from_dicts(test_sets)
  threshold, n_boot = float(eval_config.threshold), int(eval_config.get("n_boot", 500))
  seed = int(eval_config.get("bootstrap_seed", 0))
  results, delong, agreement = {}, {}, {}
  for s in test_sets:
    rows = {}
    for name, folder in models.items():
      directory = stage_exports.export_dir(folder, s.key)
      if not (directory / "offsets.npy").is_file():
        raise FileNotFoundError(f"{directory}: model {name!r} has no export of external set {s.label} "
                                "(its stage ran before the set was added to experiment.external? delete the "
                                "stage's folder to run it again)")
      rows[name] = stacking.evaluation_rows(stage_exports.read_export(directory))
      (workdir / s.key).mkdir(parents=True, exist_ok=True)
      prediction_files.write_predictions_csv(rows[name], workdir / s.key / _file_name(name))
    scan_only = external.scan_level(s.name)
    results[s.key] = {name: external_tables.set_metrics(r, scan_level_labels=scan_only, threshold=threshold,
                                                        n_boot=n_boot, seed=seed) for name, r in rows.items()}
    delong[s.key] = external_tables.delong_pairs(rows, pairs)
    readers = external.reader_labels(dataset_config, s)
    agreement[s.key] = None if readers is None else external_tables.reader_agreement(readers)
  t = external_tables.external_tables(results, delong, pairs, table_model, agreement)
  t["sets_label"] = {s.key: s.label for s in test_sets}
  text = "\n".join([f"# External test sets: {', '.join(s.label for s in test_sets)}", "",
                    external_tables.format_markdown(t, labels=t["sets_label"], threshold=threshold, n_boot=n_boot,
                                                    models=list(models))])
  report.write_text(workdir / "report.md", text)
  report.write_metrics(t, workdir / "metrics.json")
  print(text, flush=True)


def stage(config, root: pathlib.Path, models: dict[str, str], *, pairs: dict[str, str], table_model: str | None,
          after) -> list[Stage]:
  """The `external` host stage scoring `models` ({name: stage folder under root}), or [] without sets.

  `pairs` {model: the model it is tested against}; `table_model`: the model of the per-class table (None: none).
  """
  test_sets = sets(config)
  if not test_sets:
    return []
  listed = [s.as_dict() for s in test_sets]
  fn = functools.partial(run_stage, models={n: root / d for n, d in models.items()}, pairs=dict(pairs),
                         table_model=table_model, test_sets=listed, dataset_config=config.dataset,
                         eval_config=config.get("eval") or config.run.eval)
  return [Stage(STAGE, fn=fn, params={"models": dict(models), "pairs": dict(pairs), "table_model": table_model,
                                      "sets": listed}, after=tuple(after))]
