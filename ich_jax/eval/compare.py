"""Runs side by side on the same held-out studies: study-level AUC per hemorrhage type × size bin, DeLong tests.

A run's study score for a class is its most probable slice's (seed 001,
Statistical Analysis: a study is positive if any slice is; seed 000 §2.2.4),
its label the max of its slices' labels, its size bin from the study's total
blood volume (the bins of `ich_jax.size_bin`). Each row puts the studies with
that hemorrhage (and size) against every study without blood, as the
evaluation report's strata do, so a detector and a classifier are compared on
exactly the same cases: the studies every run predicted, with their labels
checked to agree. DeLong's test (paired, same studies) compares each run with
the first.

Studies are joined on study_id; runs that share none (the phantom builds
give each resolution its own UIDs: `small` and `small256` hold the same
phantoms) are joined on the study's content instead: patient_id, its number
of slices and its first z position, which a rendering at another in-plane
resolution keeps. The output says which ("joined_on").

`compare_runs` takes per-slice predictions by run name; `compare_workdirs`
reads run folders (a run with no predictions is listed as missing, never
dropped silently); `format_comparison` renders the markdown.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np

from ich_jax import LABELS, SHORT, SIZE_BINS, size_bin
from ich_jax.eval import metrics as M
from ich_jax.eval.formatting import MISSING, md_table, number, p_value
from ich_jax.eval.prediction_files import read_predictions

# The bins the quickstart CNN could not separate, also as one row (seed 001 Table 2's small lesions).
SMALL_BINS = ("punctate", "small")


def _content_keys(preds: Mapping[str, np.ndarray], study: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
  """Per study (in `ids` order): "patient|slices|first z", or None when the predictions lack the fields."""
  if "patient_id" not in preds or "z_position" not in preds:
    return None
  patient = np.asarray(preds["patient_id"]).astype(str)
  z = np.asarray(preds["z_position"], np.float64)
  keys = []
  for s in ids:
    rows = study == s
    keys.append(f"{patient[rows][0]}|{int(rows.sum())}|{z[rows].min():.1f}")
  return np.array(keys)


def study_scores(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per study: id, labels [S, 6] (max slice), scores [S, 6] (max slice), blood volume (mL, NaN if unknown)
  and the content key of the module doc (None without patient_id and z_position)."""
  study = np.asarray(preds["study_id"]).astype(str)
  ids, scores = M.scan_scores(np.asarray(preds["probabilities"], np.float64), study)
  _, labels = M.scan_scores(np.asarray(preds["labels"], np.float64), study)
  ml = (M.scan_scores(np.asarray(preds["study_blood_ml"], np.float64), study)[1] if "study_blood_ml" in preds
        else np.full(len(ids), np.nan))
  ids = np.asarray(ids).astype(str)
  return {"study_id": ids, "labels": labels > 0.5, "scores": scores, "blood_ml": ml,
          "content": _content_keys(preds, study, ids)}


def _common(studies: Mapping[str, dict], field: str) -> set:
  names = list(studies)
  common = set(studies[names[0]][field])
  for name in names[1:]:
    common &= set(studies[name][field])
  return common


def _join(studies: Mapping[str, dict]) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
  """The studies every run predicted (sorted keys), each run's row order on them and the key joined on;
  labels must agree."""
  names = list(studies)
  field = "study_id"
  common = _common(studies, field)
  if not common and all(studies[n]["content"] is not None for n in names):
    field = "content"
    for name in names:
      keys = studies[name]["content"]
      if len(set(keys)) != len(keys):
        raise ValueError(f"run {name!r}: two studies share patient, slice count and first z; cannot join "
                         "runs without common study_id")
    common = _common(studies, field)
  if not common:
    raise ValueError(f"runs {names} share no study_id (nor patient_id, slice count and first z): they were "
                     "not evaluated on the same studies")
  ids = np.array(sorted(common))
  order = {}
  for name in names:
    index = {s: i for i, s in enumerate(studies[name][field])}
    order[name] = np.array([index[s] for s in ids])
  first = studies[names[0]]["labels"][order[names[0]]]
  for name in names[1:]:
    other = studies[name]["labels"][order[name]]
    bad = np.flatnonzero((other != first).any(1))
    if bad.size:
      raise ValueError(f"runs {names[0]!r} and {name!r} disagree on the labels of study {str(ids[bad[0]])!r} "
                       f"({first[bad[0]].astype(int).tolist()} vs {other[bad[0]].astype(int).tolist()}) "
                       f"and {bad.size - 1} more: not the same data")
  return ids, order, ("study_id" if field == "study_id" else "patient_id, slice count, first z")


def compare_runs(preds_by_run: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
  """Study-level AUC per class × size bin for each run on their common studies; DeLong p against the first run.

  Rows: each class (any first) over all its studies, each size bin, and punctate + small together;
  rows without positives are left out.
  """
  if not preds_by_run:
    raise ValueError("compare_runs needs at least one run")
  studies = {name: study_scores(p) for name, p in preds_by_run.items()}
  names = list(studies)
  ids, order, joined_on = _join(studies)
  first = names[0]
  y = studies[first]["labels"][order[first]]
  ml = studies[first]["blood_ml"][order[first]]
  scores = {name: studies[name]["scores"][order[name]] for name in names}
  for name, s in scores.items():
    M.check_scores(s, f"run {name!r} probabilities")
  bins = size_bin(np.nan_to_num(ml, nan=0.0)) if np.isfinite(ml).any() else None
  healthy = ~y[:, 0]
  rows = []
  for c, label in enumerate(LABELS):
    strata = {"all": y[:, c]}
    if bins is not None:
      strata.update({b: y[:, c] & (bins == b) for b in SIZE_BINS})
      strata["+".join(SMALL_BINS)] = y[:, c] & np.isin(bins, SMALL_BINS)
    for size, pos in strata.items():
      if not pos.any():
        continue
      keep = pos | healthy
      row = {"class": label, "size": size, "n_positive": int(pos.sum()), "n_negative": int(healthy.sum()),
             "auc": {}, "p_value": {}}
      for name in names:
        row["auc"][name] = M.roc_auc(pos[keep], scores[name][keep, c])
        if name != first:
          row["p_value"][name] = M.delong_test(pos[keep], scores[first][keep, c], scores[name][keep, c])["p_value"]
      rows.append(row)
  return {"runs": names, "n_studies": len(ids), "joined_on": joined_on, "rows": rows}


def compare_workdirs(this_run: Mapping[str, np.ndarray], others: Mapping[str, str | pathlib.Path], *,
                     this_name: str = "this run") -> dict:
  """`compare_runs` of this run's predictions and each other run folder's predictions.npz (or .csv).

  A folder without predictions is listed under "missing" with its path, not compared.
  """
  preds = {this_name: this_run}
  missing = {}
  for name, folder in others.items():
    folder = pathlib.Path(folder)
    found = [folder / f for f in ("predictions.npz", "predictions.csv") if (folder / f).is_file()]
    if found:
      preds[str(name)] = read_predictions(found[0])
    else:
      missing[str(name)] = str(folder)
  out = compare_runs(preds)
  out["missing"] = missing
  out["folders"] = {str(k): str(v) for k, v in others.items()}
  return out


def format_comparison(m: Mapping, *, heading: str = "## Side by side on the same studies") -> list[str]:
  """Markdown lines: one AUC column per run, DeLong p of each later run against the first."""
  names, first = m["runs"], m["runs"][0]
  lines = [heading, "",
           f"Study-level AUC on the {m['n_studies']} held-out studies every run predicted (a study's score: its "
           "most probable slice). Each row's studies with that hemorrhage against every study without blood; size "
           "by the study's total blood volume (punctate < 0.01, small 0.01–5, medium 5–25, large > 25 mL). "
           f"p: DeLong's test against {first!r} on the same studies. Joined on {m['joined_on']}.", ""]
  for name, folder in m.get("folders", {}).items():
    state = "not found: run it first, or set config eval.compare_with" if name in m.get("missing", {}) else "read"
    lines.append(f"- {name}: `{folder}` ({state})")
  if m.get("folders"):
    lines.append("")
  header = ["Hemorrhage", "Size", "n+/n−"] + [f"AUC {n}" for n in names] + [f"p {n}" for n in names[1:]]
  rows = []
  for r in m["rows"]:
    rows.append([SHORT.get(r["class"], r["class"]) if r["size"] == "all" else "",
                 "All" if r["size"] == "all" else r["size"].capitalize(), f"{r['n_positive']}/{r['n_negative']}"]
                + [number(r["auc"][n]) for n in names]
                + [p_value(r["p_value"][n]) if n in r["p_value"] else MISSING for n in names[1:]])
  return lines + md_table(header, rows) + [""]
