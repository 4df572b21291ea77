"""Provenance: the software (ich-jax version and commit, library versions), data and config hash that made a run,
recorded in its config.json, carried into its bundle (hashed, printed by `bundle verify`) and into a prediction's
report.json. The `runs` fixture is tests/conftest.py's; its run folders are recorded as training records them."""
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jaxlib
import numpy as np
import pytest

import ich_jax
from ich_jax import bundle as bundle_lib
from ich_jax import predict, provenance
from ich_jax.bundle import __main__ as bundle_cli
from ich_jax.bundle import format as bundle_format
from ich_jax.train import config_record, loop
from tests.fake_runs import make_phantom, write_study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _git(*args, cwd=ROOT):
  return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout


def test_software_has_the_installed_versions_and_this_checkouts_commit_and_none_outside_git(tmp_path):
  s = provenance.software()
  assert s["packages"]["jax"] == jax.__version__ and s["packages"]["numpy"] == np.__version__
  assert s["packages"]["jaxlib"] == jaxlib.__version__
  assert s["ich_jax"]["version"] == ich_jax.__version__ and s["python"] == ".".join(map(str, sys.version_info[:3]))
  assert provenance.version("no-such-distribution-ich") is None
  if (ROOT / ".git").exists():
    # Uncached (`collect`): a commit made while the session runs must not fail this.
    now = provenance.collect()["ich_jax"]
    assert now["git_commit"] == _git("rev-parse", "HEAD").strip()
    assert now["git_dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    assert s["ich_jax"]["git_commit"] is not None
  # Cached per process, handed out as a copy.
  s["packages"]["jax"] = "edited"
  assert provenance.software()["packages"]["jax"] == jax.__version__
  # The package copied out of git (an installed wheel), or inside a repository that is not ich-jax's: no commit.
  (tmp_path / "site" / "ich_jax").mkdir(parents=True)
  assert provenance.collect(tmp_path / "site")["ich_jax"] == {"version": ich_jax.__version__, "git_commit": None,
                                                               "git_dirty": None}
  subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
  (tmp_path / "repo" / "lib" / "ich_jax").mkdir(parents=True)
  assert provenance.git_state(tmp_path / "repo" / "lib") == (None, None)
  # Read from package metadata, never by importing: a prediction install lacks the training libraries.
  code = ("import sys; from ich_jax import provenance; s = provenance.software(); "
          "assert not {'jax', 'flax', 'tensorflow_datasets', 'grain'} & set(sys.modules), sorted(sys.modules)")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]


def test_config_json_records_provenance_and_a_resume_under_new_software_is_recorded_not_refused(smoke_config,
                                                                                               tmp_path,
                                                                                               tiny_data_dir):
  prov = config_record.run_provenance(smoke_config)
  assert prov["dataset"] == {"name": "synthetic_ich", "config": "tiny", "version": "1.2.0",
                             "folder": str(pathlib.Path(tiny_data_dir, "synthetic_ich", "tiny", "1.2.0")),
                             "kind": "slices", "train_split": "train", "eval_split": "test"}
  config_record.record(tmp_path, smoke_config, at_step=0, provenance=prov)
  assert config_record.read_provenance(tmp_path) == prov
  # config.json still reads as the config alone.
  assert config_record.read(tmp_path) == (config_record.as_json(smoke_config), [])
  assert loop.read_config(tmp_path).to_dict() == config_record.as_tuples(config_record.as_json(smoke_config))
  # Resumed at step 6 under another jax: the newer provenance replaces the old, the difference joins the history.
  newer = json.loads(json.dumps(prov))
  newer["software"]["packages"]["jax"] = "9.9.9"
  assert config_record.record(tmp_path, smoke_config, at_step=6, provenance=newer) is None
  (entry,) = json.loads((tmp_path / "config.json").read_text())[config_record.HISTORY]
  assert entry["how"] == config_record.PROVENANCE_HOW and entry["at_step"] == 6
  assert entry["changes"] == {"provenance.software.packages.jax": [jax.__version__, "9.9.9"]}
  assert config_record.read_provenance(tmp_path) == newer
  # A step that records no provenance (evaluation only) keeps the training one.
  config_record.record(tmp_path, smoke_config, at_step=6)
  assert config_record.read_provenance(tmp_path) == newer
  # A config change that is allowed: recorded once, as the config's change (its new hash is not a second entry).
  changed = smoke_config.copy_and_resolve_references()
  changed.optimizer.learning_rate = 0.01
  config_record.record(tmp_path, changed, at_step=8, allow_change=True,
                       provenance={**newer, "config_hash": config_record.config_hash(changed)})
  history = json.loads((tmp_path / "config.json").read_text())[config_record.HISTORY]
  assert [e["how"] for e in history] == [config_record.PROVENANCE_HOW, config_record.ALLOW_FLAG]
  assert config_record.read_provenance(tmp_path)["config_hash"] == config_record.config_hash(changed)
  # The hash covers the keys that change the run, and only those.
  quiet = smoke_config.copy_and_resolve_references()
  quiet.train.log_every, quiet.eval.batch_size = 1, 3
  assert config_record.config_hash(quiet) == prov["config_hash"] != config_record.config_hash(changed)
  bad = smoke_config.copy_and_resolve_references()
  bad.provenance = "mine"
  with pytest.raises(ValueError, match="config field 'provenance' is reserved"):
    config_record.record(tmp_path / "other", bad, at_step=0)


def test_a_bundle_carries_its_runs_provenance_hashed_and_verify_prints_it(runs, tmp_path, capsys):
  src = runs["root"] / "cls_bundle"   # written by launch.py --mode export, another process
  manifest = bundle_lib.read_manifest(src)
  recorded = config_record.read_provenance(runs["cls"])
  assert recorded["config_hash"] == config_record.config_hash(loop.read_config(runs["cls"]))
  assert recorded["dataset"]["name"] == "synthetic_ich" and recorded["dataset"]["version"] == "1.2.0"
  p = bundle_format.provenance_of(manifest)
  assert p["members"] == {"cls": recorded}
  assert p["software"]["packages"] == provenance.software()["packages"]
  assert p["software"]["ich_jax"]["version"] == ich_jax.__version__
  # A combined bundle keeps each member's run provenance.
  pair = bundle_format.provenance_of(runs["pair"].manifest)
  assert pair["members"] == {"0.cls": recorded, "1.seg": config_record.read_provenance(runs["root"] / "seg")}
  assert pair["members"]["1.seg"]["config_hash"] != recorded["config_hash"]
  # verify prints it.
  assert bundle_cli.main(["verify", str(src)]) == 0
  out = capsys.readouterr().out
  jax_line = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax "
  assert f"exported with ich-jax {ich_jax.__version__}" in out and jax_line in out
  assert f"cls: dataset synthetic_ich/tiny v1.2.0 ({recorded['dataset']['folder']}); splits: train 'train', " \
         "eval 'test'" in out
  assert f"config sha256 {recorded['config_hash']}" in out
  # An edit of the provenance breaks the manifest's hash: verify refuses.
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  body = json.loads((edited / "manifest.json").read_text())
  body["members"][0]["source"]["provenance"]["dataset"]["eval_split"] = "train"
  (edited / "manifest.json").write_text(json.dumps(body))
  assert bundle_cli.main(["verify", str(edited)]) == 1
  assert "manifest's hash does not match" in capsys.readouterr().err


def test_a_bundle_written_before_provenance_still_loads_and_says_so(runs, tmp_path, capsys):
  old = tmp_path / "old"
  shutil.copytree(runs["root"] / "cls_bundle", old)
  body = json.loads((old / "manifest.json").read_text())
  del body["provenance"]
  for m in body["members"]:
    m["source"].pop("provenance")
  body["hash"] = bundle_format.manifest_hash(body)
  (old / "manifest.json").write_text(json.dumps(body))
  loaded = bundle_lib.load(old)
  assert bundle_format.provenance_of(loaded.manifest) == {"software": None, "members": {"cls": None}}
  assert bundle_cli.main(["verify", str(old)]) == 0
  assert "provenance: not recorded" in capsys.readouterr().out


def test_a_prediction_report_says_which_software_and_runs_made_it(runs, tmp_path):
  write_study(tmp_path / "study", make_phantom(5, slices=4), decoys=False)
  options = predict.Options(batch_size=8, progress=False, overview_slices=0)
  report = predict.predict_study(runs["pair"], tmp_path / "study", tmp_path / "out", options)
  written = json.loads((tmp_path / "out" / "report.json").read_text())
  assert written["software"] == report["software"] == provenance.software()
  assert written["bundle"]["provenance"] == bundle_format.provenance_of(runs["pair"].manifest)
  assert written["bundle"]["provenance"]["members"]["0.cls"] == config_record.read_provenance(runs["cls"])
  # report.md says it for people: the predicting software and each member's training data.
  md = (tmp_path / "out" / "report.md").read_text()
  dataset = written["bundle"]["provenance"]["members"]["0.cls"]["dataset"]
  assert f"- Made by: {provenance.describe(provenance.software())}; " in md
  assert (f"0.cls: {dataset['name']}/{dataset['config']} v{dataset['version']}, split "
          f"{dataset['train_split']!r}") in md and dataset["version"] == "1.2.0"
