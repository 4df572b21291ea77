"""Seed 000 §2.1: four classifiers trained on weak (slice labels) and strong (masks) annotation; Table 2.

The stages under the workdir W, per backbone B (config.experiment.backbones) and annotation A:

  B/weak      slice classification loss only (§2.1.5, "slice-wise hemorrhage labeling")
  B/strong    the same plus the saliency-supervision loss: the Grad-CAM of the last convolutional layer
              against the hemorrhage mask (§2.1.5; `task.saliency_loss_weight`)
  report      W/report.md and W/metrics.json: accuracy and AUC of any hemorrhage with 95% bootstrap CIs per
              backbone and annotation, and DeLong's test of strong against weak (Table 2)
  external    with `experiment.external` sets (seed 000 §2.1.3 tests on external sets: Qure.ai's, i.e.
              CQ500): every run's AUC on each set, strong against weak (ich_jax.experiments.external)

Each B/A folder is an ordinary run folder (`launch.py` train + evaluate):
checkpoints/, metrics.json, report.md and predictions.csv on the evaluated
split, in the standard format (ich_jax.eval.prediction_files), for other experiments
to read (seed 000's weighted ensemble compares its Table 4 against the strong
runs: `run_dir`).
"""
from __future__ import annotations

import functools
import pathlib

import numpy as np

from ich_jax.eval import metrics as M
from ich_jax.eval import prediction_files, report
from ich_jax.eval.formatting import auc_ci, md_table, number, p_value
from ich_jax.experiments import external
from ich_jax.experiments.runner import Stage
from ich_jax.experiments.stage_configs import stage_config

FINAL = None
ANNOTATIONS = ("weak", "strong")


def run_dir(root, backbone: str, annotation: str) -> pathlib.Path:
  """The run folder of one backbone and annotation under the experiment's workdir `root`."""
  return pathlib.Path(root) / backbone / annotation


def run_config(config, backbone: str, annotation: str):
  """The loop config of one backbone and annotation."""
  if annotation not in ANNOTATIONS:
    raise ValueError(f"config experiment.annotations has {annotation!r}; expected some of {ANNOTATIONS}")
  c = stage_config(config.run, config.dataset, config.seed, model=config.backbones[backbone])
  if annotation == "strong":
    c.task.saliency_loss_weight = float(config.strong.saliency_loss_weight)
  test_sets = external.sets(config)
  if test_sets:
    # Seed 000 §2.1.3: every model is also tested on the external sets (export/<key>/, the `external` stage).
    with c.unlocked():
      c.export = {"splits": []}
    external.export_stage_config(c, test_sets)
  return c


def _check_masks(config) -> None:
  from ich_jax.data import datasets

  features = datasets.builder(config.dataset).info.features
  if "mask" not in features:
    raise ValueError(f"config dataset {config.dataset.name}/{config.dataset.config} has no masks: the strong "
                     "annotation needs them (synthetic_ich, physionet_ct_ich); train the weak arm alone with "
                     "--config.experiment.annotations=\"('weak',)\"")


def stages(config, root: pathlib.Path) -> list[Stage]:
  e = config.experiment
  backbones, annotations = list(e.backbones), list(e.annotations)
  missing = [b for b in backbones if b not in config.backbones]
  if missing:
    raise KeyError(f"config experiment.backbones names {missing}, which config.backbones does not define "
                   f"(it has {sorted(config.backbones)})")
  if "strong" in annotations:
    _check_masks(config)
  steps = ("train", "eval", "export") if external.sets(config) else ("train", "eval")
  runs = [Stage(str(run_dir("", b, a)), run_config(config, b, a), steps=steps)
          for b in backbones for a in annotations]
  out = runs + [Stage("report", fn=functools.partial(write_report, root=root, config=config),
                      params={"backbones": backbones, "annotations": annotations},
                      after=tuple(s.name for s in runs))]
  # Table 2 on the external sets: every run, strong tested against weak (DeLong) per backbone.
  models = {s.name: s.name for s in runs}
  pairs = {f"{b}/strong": f"{b}/weak" for b in backbones} if set(ANNOTATIONS) <= set(annotations) else {}
  return out + external.stage(config, root, models, pairs=pairs, table_model=None, after=tuple(models))


# --- The report: seed 000 Table 2 ---------------------------------------------------------------


def accuracy_ci(y, p, threshold: float, *, n_boot: int, seed: int, groups=None) -> tuple[float, float, float]:
  """Accuracy at `threshold` with its percentile bootstrap interval (seed 000 §2.1.5: 500 replications)."""
  return M.bootstrap_ci(lambda yy, pp: M.binary_stats(yy, pp, threshold)["accuracy"], y, p, n_boot=n_boot,
                        seed=seed, groups=groups)


def level_scores(preds, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
  """(labels, probabilities of any hemorrhage, bootstrap groups, unit ids) at slice or scan level."""
  y, p, study = np.asarray(preds["labels"])[:, 0] > 0.5, np.asarray(preds["probabilities"])[:, 0], preds["study_id"]
  if level == "slice":
    return y, p, np.asarray(study), np.asarray(study)
  ids, scan_p = M.scan_scores(p, study)
  return M.scan_scores(y, study)[1] > 0.5, scan_p, None, ids


def table2(root: pathlib.Path, config) -> dict:
  """{level: {backbone: {annotation: entry, "delong_strong_vs_weak": test}}} from the runs' predictions.csv."""
  e, ev = config.experiment, config.run.eval
  n_boot, seed, threshold = int(ev.get("n_boot", 500)), int(ev.get("bootstrap_seed", 0)), float(ev.threshold)
  out: dict = {"slice": {}, "scan": {}}
  for b in e.backbones:
    preds = {a: prediction_files.read_predictions(run_dir(root, b, a) / "predictions.csv") for a in e.annotations}
    run_metrics = {a: report.read_metrics(run_dir(root, b, a)) for a in e.annotations}
    if len(preds) == 2:
      preds["strong"] = prediction_files.align(preds["weak"], preds["strong"], names=(f"{b}/weak", f"{b}/strong"))
    for level in ("slice", "scan"):
      row = out[level].setdefault(b, {})
      scores = {}
      for a in e.annotations:
        y, p, groups, _ = level_scores(preds[a], level)
        scores[a] = (y, p)
        acc = accuracy_ci(y, p, threshold, n_boot=n_boot, seed=seed, groups=groups)
        any_ = run_metrics[a][level]["any"]
        row[a] = {"accuracy": acc[0], "accuracy_ci": [acc[1], acc[2]], "auc": any_["auc"], "auc_ci": any_["auc_ci"],
                  "sensitivity": any_["sensitivity"], "specificity": any_["specificity"],
                  "n_positive": any_["n_positive"], "n_negative": any_["n_negative"]}
      if len(scores) == 2:
        row["delong_strong_vs_weak"] = M.delong_test(scores["strong"][0], scores["strong"][1], scores["weak"][1])
  return out


def write_report(workdir: pathlib.Path, *, root: pathlib.Path, config) -> None:
  t2 = table2(root, config)
  e = config.experiment
  first = report.read_metrics(run_dir(root, e.backbones[0], e.annotations[0]))
  lines = ["# Seed 000 §2.1: weak (slice labels) vs strong (mask) annotation", "",
           (f"Dataset {first.get('dataset')}, evaluated on split {first.get('split')!r}: {first['n_slices']} slices "
            f"({first['n_positive_slices']} with blood), {first['n_scans']} scans ({first['n_positive_scans']} with "
            f"blood). Weak: slice classification loss only. Strong: plus the saliency-supervision loss (Grad-CAM of "
            f"the last convolutional layer against the mask, weight {config.strong.saliency_loss_weight}). Training "
            f"slices balanced: as many without blood as with, subtypes balanced among them. Accuracy, sensitivity "
            f"and specificity of any hemorrhage at threshold {config.run.eval.threshold}; 95% CIs: "
            f"{config.run.eval.get('n_boot', 500)} bootstrap replications (slice level: whole studies resampled); "
            f"DeLong's test two-sided, strong against weak. A scan's probability is its maximum slice's."), ""]
  names = {b: f"{b} ({config.backbones[b].name})" if config.backbones[b].name != b else b for b in e.backbones}
  for level in ("slice", "scan"):
    body = []
    for b in e.backbones:
      row = t2[level][b]
      test = row.get("delong_strong_vs_weak")
      for a in e.annotations:
        r = row[a]
        acc = auc_ci({"auc": r["accuracy"], "auc_ci": r["accuracy_ci"]})
        body.append([names[b], a, acc, auc_ci(r), number(r["sensitivity"]), number(r["specificity"]),
                     p_value(test["p_value"]) if test is not None and a == "strong" else ""])
    lines += [f"## Table 2, {level} level: models trained with weakly and strongly annotated data", ""]
    lines += md_table(["Model", "Annotation", "Accuracy [95% CI]", "AUC [95% CI]", "Sensitivity",
                       "Specificity", "DeLong p (strong vs weak)"], body) + [""]
  lines += ["Each run's folder (BACKBONE/ANNOTATION) holds its report.md and predictions.csv.", ""]
  text = "\n".join(lines)
  report.write_text(root / "report.md", text)
  report.write_metrics({"table2": t2}, root / "metrics.json")
  print(text, flush=True)
