"""`ich_jax.data.datasets` without a built dataset: builders by name, reading fields of a random-access source,
record subsets, an unbuilt dataset named, and a cross-validation round of a dataset that stores its folds
(built datasets: fold splits, tests/data/test_folds.py; decoded records, tests/data/test_records.py)."""
import pathlib

import numpy as np
import pytest
from ml_collections import ConfigDict

from ich_jax.data import datasets


class _Source:
  """A random-access source of hand-made records; counts how it is read."""

  def __init__(self, n: int, batched: bool):
    self.records = [{"study_id": f"s{i // 3}".encode(), "slice_index": np.int32(i), "labels": np.full(6, i % 2)}
                    for i in range(n)]
    self.calls = []
    if batched:
      self.__getitems__ = self._getitems

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.calls.append(("one", i))
    return self.records[i]

  def _getitems(self, ids):
    self.calls.append(("many", list(ids)))
    return [self.records[i] for i in ids]


def test_builders_by_name_and_an_unknown_name():
  assert datasets.builder_class("synthetic_ich").__name__ == "SyntheticIch"
  with pytest.raises(KeyError, match="dataset.name='nope' is not a known dataset; known: cq500, physionet_ct_ich, "
                                     "rsna_ich, synthetic_ich"):
    datasets.builder_class("nope")


@pytest.mark.parametrize("batched", [True, False], ids=["getitems", "one_by_one"])
def test_read_fields_in_record_order_by_chunks(batched):
  source = _Source(7, batched)
  got = datasets.read_fields(source, ("slice_index", "labels"), chunk=3)
  np.testing.assert_array_equal(got["slice_index"], np.arange(7))
  assert got["labels"].shape == (7, 6) and got["labels"][:, 0].tolist() == [0, 1, 0, 1, 0, 1, 0]
  if batched:
    assert source.calls == [("many", [0, 1, 2]), ("many", [3, 4, 5]), ("many", [6])]
  else:
    assert source.calls == [("one", i) for i in range(7)]
  np.testing.assert_array_equal(datasets.read_field(source, "study_id"), [b"s0"] * 3 + [b"s1"] * 3 + [b"s2"])
  assert datasets.read_fields(_Source(0, batched), ("labels",))["labels"].shape == (0,)


def test_a_missing_field_names_the_record_and_what_it_has():
  source = _Source(4, True)
  del source.records[2]["labels"]
  with pytest.raises(datasets.MissingField) as e:
    datasets.read_fields(source, ("labels",))
  assert isinstance(e.value, KeyError) and (e.value.key, e.value.record) == ("labels", 2)
  assert "record 2 has no field 'labels' (it has ['slice_index', 'study_id'])" in str(e.value)


@pytest.mark.parametrize("batched", [True, False], ids=["getitems", "one_by_one"])
def test_a_record_subset_renumbers_its_rows(batched):
  subset = datasets.RecordSubset(_Source(10, batched), [7, 2, 5])
  assert len(subset) == 3
  assert [int(subset[i]["slice_index"]) for i in (0, 1, 2, -1)] == [7, 2, 5, 5]
  assert [int(r["slice_index"]) for r in subset.__getitems__([2, 0])] == [5, 7]
  np.testing.assert_array_equal(datasets.read_field(subset, "slice_index"), [7, 2, 5])
  for i in (3, -4):
    with pytest.raises(IndexError, match=f"record {i} of a 3-record subset"):
      subset[i]


def test_opening_an_unbuilt_dataset_names_it_and_the_folder(tmp_path):
  config = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": str(tmp_path)})
  assert datasets.data_dir(config) == str(tmp_path.absolute())
  with pytest.raises(FileNotFoundError, match=f"dataset synthetic_ich/tiny is not built in {tmp_path}; run training"):
    datasets.open_split(config, "train")
  # A run that leaves out PhysioNet's chronic subject reads a build of its own, and the message names that build.
  config = ConfigDict({"name": "physionet_ct_ich", "config": "slices", "data_dir": str(tmp_path),
                       "exclude_chronic": True})
  with pytest.raises(FileNotFoundError, match="dataset physionet_ct_ich/slices_exclude_chronic is not built"):
    datasets.open_split(config, "fold0")


def test_a_dataset_with_stored_folds_uses_them_for_a_round(tmp_path):
  # physionet_ct_ich stores subject folds as splits (fold0 …); before it is built the round is named from them.
  config = ConfigDict({"name": "physionet_ct_ich", "config": "slices", "data_dir": str(tmp_path)})
  assert datasets.cv_round(config, 5, 4) == {"train": "fold1+fold2+fold3", "validation": "fold0", "test": "fold4"}
  # Any other dataset is cross-validated over the studies of the pool.
  other = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": str(tmp_path)})
  assert datasets.cv_round(other, 5, 4, pool="train+test") == {
      "train": "train+test[fold=1,2,3/5]", "validation": "train+test[fold=0/5]", "test": "train+test[fold=4/5]"}


def test_tfds_data_dir_replaces_the_default_and_the_path_read_is_printed(tiny_data_dir, monkeypatch, capsys):
  monkeypatch.setenv("TFDS_DATA_DIR", tiny_data_dir)
  default = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": datasets.DEFAULT_DATA_DIR})
  assert datasets.data_dir(default) == str(pathlib.Path(tiny_data_dir).absolute())
  # An explicit data_dir is used as given, relative to the working directory.
  monkeypatch.chdir(pathlib.Path(tiny_data_dir).parent)
  explicit = ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": "elsewhere"})
  assert datasets.data_dir(explicit) == str(pathlib.Path(tiny_data_dir).parent / "elsewhere")
  # The default, resolved through TFDS_DATA_DIR, reads the session's build (nothing built again) and says where.
  datasets.ensure_built(default)
  out = capsys.readouterr().out
  assert "Building" not in out
  assert f"Dataset synthetic_ich/tiny: {pathlib.Path(tiny_data_dir).absolute() / 'synthetic_ich' / 'tiny'}" in out
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert datasets.data_dir(default) == str(pathlib.Path(datasets.DEFAULT_DATA_DIR).absolute())
