"""External test sets named in a config: "name[/config]:split", checked before anything runs."""
import ml_collections
import pytest

from ich_jax.data import external


def _dataset(config="slices256"):
  return ml_collections.ConfigDict({"name": "rsna_ich", "config": config, "data_dir": "/tmp/d", "manual_dir": "/r",
                                    "train_split": "train", "eval_split": "test"})


def test_sets_take_the_training_config_of_their_kind_and_their_own_download():
  sets = external.parse("cq500:test, physionet_ct_ich/scans256:fold0+fold1", _dataset("slices256_stage1"),
                        {"cq500": "/data/cq500"})
  assert [(s.name, s.config, s.split, s.manual_dir) for s in sets] == [
      ("cq500", "slices256", "test", "/data/cq500"), ("physionet_ct_ich", "scans256", "fold0+fold1", "")]
  assert [s.key for s in sets] == ["cq500.test", "physionet_ct_ich.fold0+fold1"]
  assert sets[0].label == "cq500/slices256:test"
  assert external.from_dicts([s.as_dict() for s in sets]) == sets
  ds = external.dataset_config(_dataset(), sets[0])
  assert (ds.name, ds.config, ds.manual_dir, ds.eval_split, ds.data_dir) == (
      "cq500", "slices256", "/data/cq500", "test", "/tmp/d")
  assert external.parse("", _dataset()) == [] and external.parse((), _dataset()) == []


def test_scan_level_labels_are_cq500s():
  assert external.scan_level("cq500") and not external.scan_level("physionet_ct_ich")


@pytest.mark.parametrize("entry,match", [
    ("cq500", "expected name\\[/config\\]:split"),
    ("nope:test", "dataset 'nope' is not known"),
    ("cq500/slices128:test", "cq500 has no builder config 'slices128'.*slices256"),
    ("cq500:test,cq500:test", "names 'cq500.test' twice"),
])
def test_a_bad_entry_is_refused_naming_it(entry, match):
  with pytest.raises((ValueError, KeyError), match=match):
    external.parse(entry, _dataset())


def test_a_header_window_model_is_refused_a_set_without_header_windows_before_anything_trains():
  from configs import rsna_cascade
  from ich_jax import experiments

  config = rsna_cascade.get_config("neighbours")
  config.cnn.data.intensity = "dicom_window"
  config.experiment.external = "cq500/slices256:test,physionet_ct_ich/slices256:fold0"
  config.experiment.external_manual_dir.cq500 = "/data/cq500"
  config.experiment.external_manual_dir.physionet_ct_ich = "/data/ct-ich"
  with pytest.raises(ValueError, match="dicom_window.*physionet_ct_ich/slices256:fold0 do not.*intensity='window'"):
    experiments.stages(config, "/nonexistent")
  config.experiment.external = "cq500/slices256:test"   # cq500 keeps each slice's header window
  assert experiments.stages(config, "/nonexistent")[-1].name == "external"
