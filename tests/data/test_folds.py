"""Folds by study: the split names, the assignment, and fold subsets of a built dataset."""
import numpy as np
import pytest
from ml_collections import ConfigDict

from ich_jax.data import datasets, folds


def test_parse_split_names():
  assert folds.parse_split("train") == ("train", None)
  assert folds.parse_split("train[fold=3/10]") == ("train", (True, 3, 10))
  assert folds.parse_split("fold0+fold1[fold!=0/5]") == ("fold0+fold1", (False, 0, 5))
  assert folds.fold_split_names(5, 2) == ("train[fold!=2/5]", "train[fold=2/5]")
  assert not folds.is_fold_split("train[:10%]") and folds.is_fold_split("test[fold=1/2]")
  for bad in ("train[fold=5/5]", "train[fold=0/1]"):
    with pytest.raises(ValueError, match="is not a fold"):
      folds.parse_split(bad)
  with pytest.raises(ValueError, match="expected NAME"):
    folds.parse_split("train[fold=a/5]")


def test_studies_are_dealt_evenly_and_never_split():
  ids = np.repeat([f"s{k}".encode() for k in range(23)], np.arange(1, 24))   # study k has k+1 slices
  assigned = folds.study_folds(ids, 5)
  per_study = {s: set(assigned[ids == s]) for s in set(ids)}
  assert all(len(v) == 1 for v in per_study.values())
  studies_per_fold = np.bincount([v.pop() for v in per_study.values()], minlength=5)
  assert studies_per_fold.max() - studies_per_fold.min() <= 1 and studies_per_fold.sum() == 23
  # Bytes and str ids give the same folds; another seed gives other folds.
  assert np.array_equal(assigned, folds.study_folds(folds.as_text(ids), 5))
  assert not np.array_equal(assigned, folds.study_folds(ids, 5, seed=1))


def test_fold_splits_of_a_built_dataset_partition_it_by_study(tiny_data_dir):
  cfg = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": tiny_data_dir})
  whole = datasets.open_split(cfg, "train")
  held_out = datasets.open_split(cfg, "train[fold=1/3]")
  held_in = datasets.open_split(cfg, "train[fold!=1/3]")
  assert len(held_out) + len(held_in) == len(whole) and len(held_out) and len(held_in)

  def keys(src):
    return {(bytes(r["study_id"]), int(r["slice_index"])) for r in (src[i] for i in range(len(src)))}

  out_keys, in_keys = keys(held_out), keys(held_in)
  assert out_keys | in_keys == keys(whole) and not out_keys & in_keys
  assert not {s for s, _ in out_keys} & {s for s, _ in in_keys}
  # A subset reads the same records as the whole split, batched or one at a time.
  assert [r["slice_index"] for r in held_out.__getitems__([0, 1])] == [held_out[0]["slice_index"],
                                                                      held_out[1]["slice_index"]]
  with pytest.raises(IndexError):
    held_out[len(held_out)]
  with pytest.raises(KeyError, match="has no split 'tune'"):
    datasets.open_split(cfg, "tune[fold=0/3]")


def test_several_folds_and_a_cross_validation_round(tiny_data_dir):
  assert folds.parse_split("train[fold=2,0/5]") == ("train", (True, (0, 2), 5))
  with pytest.raises(ValueError, match="named twice"):
    folds.parse_split("train[fold=1,1/5]")
  ids = np.array([f"s{i % 11}" for i in range(40)])
  np.testing.assert_array_equal(folds.fold_rows(ids, (True, (0, 2), 5)),
                                np.union1d(folds.fold_rows(ids, (True, 0, 5)), folds.fold_rows(ids, (True, 2, 5))))
  # Seed 002's round: test fold k, validation fold k+1, the other three train; together the whole pool.
  r = folds.cv_round("train+test", 5, 4)
  assert r == {"train": "train+test[fold=1,2,3/5]", "validation": "train+test[fold=0/5]", "test": "train+test[fold=4/5]"}
  cfg = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": tiny_data_dir})
  parts = {k: {bytes(s["study_id"]) for s in (src[i] for i in range(len(src)))}
           for k, src in ((k, datasets.open_split(cfg, v)) for k, v in r.items())}
  assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["validation"])
  pool = datasets.open_split(cfg, "train+test")
  assert len(parts["train"] | parts["validation"] | parts["test"]) == len({bytes(pool[i]["study_id"]) for i in range(len(pool))})
  with pytest.raises(ValueError, match="needs a test, a validation"):
    folds.cv_round("train", 2, 0)
