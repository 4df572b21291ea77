"""Slices joined to exported base maps (seed 000 §2.2.3): each record gets its own export row's maps, in the
order of the exports; an export of other slices, or augmentation, is refused."""
import numpy as np
import pytest

from ich_jax.data import base_maps, config_defaults, series_index, stage_exports
from tests.data.slice_fakes import fake_source


def _export(workdir, records, record_index, scale):
  """An export whose row r claims record record_index[r], with the map of record i constant at scale · i."""
  order = np.asarray(record_index)
  rows = {key: np.asarray([records[i][key] for i in order])
          for key in ("series_id", "study_id", "slice_index", "z_position", "labels")}
  rows["probabilities"] = np.zeros((len(order), 6), np.float32)
  rows["maps"] = np.stack([np.full((16, 16), scale * i, np.float32) for i in order])
  rows["record_index"] = order
  stage_exports.write_export(stage_exports.export_dir(workdir, "train"), rows)


def _cfg():
  cfg = config_defaults.default_data_config()
  cfg.image_size = 16
  cfg.augment.enabled = False
  cfg.read_threads = 1
  return cfg


def test_each_record_gets_its_own_rows_maps(tmp_path):
  records = fake_source()
  order = np.random.default_rng(0).permutation(len(records))   # a run gathers its rows in any order
  for k, scale in enumerate((1.0, 2.0)):
    _export(tmp_path / f"base{k}", records, order, scale)
  source = base_maps.BaseMapsSource(series_index.SeriesSource(records), [tmp_path / "base0", tmp_path / "base1"],
                                    "train")
  for i in (0, 5, len(records) - 1):
    example = base_maps.load(source, _cfg(), i)
    assert example["maps"].shape == (16, 16, 2) and example["maps"].dtype == np.float32
    np.testing.assert_array_equal(example["maps"][3, 4], [i, 2 * i])
    assert example["series_id"] == records[i]["series_id"] and example["slice_index"] == records[i]["slice_index"]
  batch = next(iter(base_maps.eval_batches(source, _cfg(), batch_size=4)))
  np.testing.assert_array_equal(batch["maps"][:, 0, 0, 1], 2 * np.arange(4))


def test_an_export_of_other_slices_or_augmentation_is_refused(tmp_path):
  records = fake_source()
  rows = np.arange(len(records))
  _export(tmp_path / "base", records, rows, 1.0)
  # The same rows, each claiming its neighbour's record: the ids do not match the records they name.
  _export(tmp_path / "shifted", records, rows, 1.0)
  np.save(stage_exports.export_dir(tmp_path / "shifted", "train") / "record_index.npy", np.roll(rows, 1))
  source = base_maps.BaseMapsSource(series_index.SeriesSource(records), [tmp_path / "shifted"], "train")
  with pytest.raises(ValueError, match="another build of the dataset"):
    base_maps.load(source, _cfg(), 3)
  cfg = _cfg()
  cfg.augment.enabled = True
  source = base_maps.BaseMapsSource(series_index.SeriesSource(records), [tmp_path / "base"], "train")
  with pytest.raises(ValueError, match="augment.enabled=True"):
    base_maps.eval_batches(source, cfg, batch_size=4)
