"""Cross-validation folds by study, and split names that select them.

Seed 003 trains its CNNs with 5-fold and its sequence models with 10-fold
cross-validation (§2 "Network training procedure"); seed 002 uses 5-fold
subject cross-validation; seed 000 balances its training subsets. One fold
assignment serves all of them, so a stage-2 model trained on fold k's
complement sees out-of-fold stage-1 outputs exactly when both stages use the
same studies and fold count.

A split name `train[fold=3/5]` is fold 3 of 5 of split `train`,
`train[fold!=3/5]` the other four, and `train[fold=0,1,2/5]` folds 0, 1 and 2
(seed 002's rounds: one fold tests, one validates, three train; `cv_round`). Every slice (and series) of one study lands
in one fold; studies are shuffled with a fixed seed and dealt in turn, so fold
sizes differ by at most one study. The synthetic and RSNA datasets have one
series per study, PhysioNet CT-ICH one study per patient; a patient with two
studies (synthetic_ich) may have them in two folds, as in seed 003's split by
study.
"""
from __future__ import annotations

import re

import numpy as np


def as_text(values) -> np.ndarray:
  """Ids as str: TFDS gives bytes, gathered ids are object arrays of bytes."""
  values = np.asarray(values)
  if values.dtype.kind == "S":
    return np.char.decode(values, "utf-8")
  if values.dtype.kind == "U":
    return values
  return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]).reshape(values.shape)


def study_folds(study_ids, num_folds: int, seed: int = 0) -> np.ndarray:
  """Fold (0 … num_folds-1) of each entry: studies in sorted order, shuffled by `seed`, dealt in turn.

  Every entry of a study lands in the same fold; fold sizes differ by at most one study.
  """
  if num_folds < 2:
    raise ValueError(f"num_folds={num_folds}: cross-validation needs at least 2 folds")
  studies, inverse = np.unique(as_text(study_ids), return_inverse=True)
  fold_of_study = np.empty(len(studies), np.int64)
  fold_of_study[np.random.default_rng(seed).permutation(len(studies))] = np.arange(len(studies)) % num_folds
  return fold_of_study[inverse.reshape(-1)]


_FOLD_SPLIT = re.compile(r"^(?P<name>[^\[\]]+)(\[fold(?P<op>!?=)(?P<k>\d+(,\d+)*)/(?P<n>\d+)\])?$")


def parse_split(split: str) -> tuple[str, tuple[bool, int | tuple[int, ...], int] | None]:
  """`"train"` → ("train", None); `"train[fold=3/10]"` → ("train", (True, 3, 10)); `fold!=` → (False, 3, 10);
  several folds `"train[fold=0,2/5]"` → ("train", (True, (0, 2), 5))."""
  m = _FOLD_SPLIT.match(split)
  if m is None:
    raise ValueError(f"split {split!r}: expected NAME, NAME[fold=K/N], NAME[fold!=K/N] or NAME[fold=K1,K2,.../N]")
  if m["k"] is None:
    return m["name"], None
  ks, n = [int(k) for k in m["k"].split(",")], int(m["n"])
  for k in ks:
    if n < 2 or not 0 <= k < n:
      raise ValueError(f"split {split!r}: fold {k} of {n} is not a fold (need 0 <= K < N, N >= 2)")
  if len(set(ks)) != len(ks):
    raise ValueError(f"split {split!r}: a fold is named twice")
  return m["name"], (m["op"] == "=", ks[0] if len(ks) == 1 else tuple(sorted(ks)), n)


def is_fold_split(split: str) -> bool:
  """True for `NAME[fold=K/N]` / `NAME[fold!=K/N]`; other TFDS slicing (`train[:10%]`) is not ours."""
  return _FOLD_SPLIT.match(split) is not None and parse_split(split)[1] is not None


def fold_rows(study_ids, fold: tuple[bool, int, int]) -> np.ndarray:
  """Indices of the entries a parsed fold selects (`parse_split(...)[1]`)."""
  held_out, k, n = fold
  return np.flatnonzero(np.isin(study_folds(study_ids, n), np.atleast_1d(k)) == held_out)


def fold_split_names(num_folds: int, fold: int, base: str = "train") -> tuple[str, str]:
  """(train, held-out) split names of round `fold` of `num_folds`."""
  return f"{base}[fold!={fold}/{num_folds}]", f"{base}[fold={fold}/{num_folds}]"


def cv_round(base: str, num_folds: int, fold: int) -> dict[str, str]:
  """Split names of round `fold` of seed 002's cross-validation over split(s) `base` (§6: "one fold of the CT
  scans was left as a held-out set for testing, one fold for validation, and three folds were used for training").

  Test = fold k, validation = fold k+1 (mod N; the paper does not say which, and physionet_ct_ich's
  `fold_splits` makes the same choice), train = the other N-2. `base` may join splits
  ("train+validation+test": cross-validation over every study of a dataset, as seed 002 over its 82 subjects).
  """
  if num_folds < 3:
    raise ValueError(f"num_folds={num_folds}: a round needs a test, a validation and at least one training fold")
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold={fold} is not in [0, {num_folds})")
  val = (fold + 1) % num_folds
  train = ",".join(str(k) for k in range(num_folds) if k not in (fold, val))
  return {"train": f"{base}[fold={train}/{num_folds}]", "validation": f"{base}[fold={val}/{num_folds}]",
          "test": f"{base}[fold={fold}/{num_folds}]"}
