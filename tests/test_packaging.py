"""The package: pyproject.toml's installs agree with requirements.txt, the wheel ships the commands and configs,
prediction runs without the training install, and the training commands say what to install."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import launch
from ich_jax import extras
from tests.fake_runs import make_phantom, write_study

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What the prediction install must run without (the "light install").
TRAINING_ONLY = ("tensorflow_datasets", "array_record", "grain", "orbax")
COMMANDS = {"ich-jax-train", "ich-jax-predict", "ich-jax-eval", "ich-jax-bundle"}


def _requirements(lines) -> dict[str, str]:
  reqs = [Requirement(s) for s in (line.split("#", 1)[0].strip() for line in lines) if s]
  return {canonicalize_name(r.name): str(r.specifier) for r in reqs}


def test_pyproject_installs_are_requirements_txt_split_and_the_prediction_install_has_no_training_stack():
  base = _requirements(PROJECT["dependencies"])
  extra = PROJECT["optional-dependencies"]
  train, test = _requirements(extra["train"]), _requirements(extra["test"])
  flat = _requirements((ROOT / "requirements.txt").read_text().splitlines())
  assert {**base, **train, **test} == flat, "pyproject.toml and requirements.txt list different requirements"
  assert not set(base) & set(train) and not set(base) & set(test)
  assert not {"tensorflow-datasets", "array-record", "grain", "orbax-checkpoint"} & set(base)
  # The GPU extra keeps jax inside the base install's bounds (a bare `pip install -U "jax[cuda12]"` would not).
  for name, jax_extra in (("gpu", "cuda12"), ("tpu", "tpu")):
    (accelerator,) = [Requirement(r) for r in extra[name]]
    assert accelerator.name == "jax" and accelerator.extras == {jax_extra}
    assert str(accelerator.specifier) == base["jax"]
  assert set(PROJECT["scripts"]) == COMMANDS
  # The TFDS record decoding uses private attributes (ich_jax/data/records.py): bounded above.
  assert "<" in train["tensorflow-datasets"] and "<" in train["grain"]


def test_the_wheel_ships_launch_configs_builders_and_the_four_commands(tmp_path):
  # The build backend from this environment when it has one (no registry needed), else pip fetches it.
  isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
  # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
  source = tmp_path / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md", "launch.py"):
    shutil.copy2(ROOT / name, source / name)
  for name in ("ich_jax", "configs", "data_builders"):
    shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
  run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path),
                        str(source)], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  (wheel,) = tmp_path.glob("ich_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for f in ("launch.py", "configs/quickstart.py", "configs/common.py", "data_builders/cq500/cq500.py",
            "ich_jax/predict.py", "ich_jax/bundle/__main__.py"):
    assert f in names, f"the wheel lacks {f}"
  assert not any(n.startswith("tests/") for n in names)
  info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
  entry_points = zipfile.ZipFile(wheel).read(info).decode()
  assert "ich-jax-predict = ich_jax.predict:main" in entry_points and "ich-jax-train = launch:cli" in entry_points


# Imports of the training stack fail in the child, as in an environment where it is not installed.
BLOCK = f"""
import runpy, sys
class NotInstalled:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {TRAINING_ONLY!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NotInstalled())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__")
"""


def _without_training_stack(tmp_path, *args):
  return subprocess.run([sys.executable, "-c", BLOCK, *map(str, args)], cwd=tmp_path, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_prediction_and_bundle_verify_run_without_the_training_stack(runs, tmp_path):
  bundle = runs["root"] / "pair"   # a classifier's probabilities with a U-Net's mask
  write_study(tmp_path / "study", make_phantom(3), decoys=False)
  run = _without_training_stack(tmp_path, "ich_jax.predict", "--model", bundle, "--input", tmp_path / "study",
                                "--output", tmp_path / "out", "--no-progress", "--batch-size", "8")
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["status"] in ("ok", "incomplete") and (tmp_path / "out" / "mask.nii.gz").exists()
  # The same study through the full install (this process) gives the same study probability.
  from ich_jax import predict

  full = predict.predict_study(runs["pair"], tmp_path / "study", tmp_path / "full",
                               predict.Options(batch_size=8, progress=False))
  assert report["findings"]["any"]["probability"] == pytest.approx(full["findings"]["any"]["probability"], abs=1e-6)
  verify = _without_training_stack(tmp_path, "ich_jax.bundle", "verify", bundle)
  assert verify.returncode == 0 and "sha256" in verify.stdout, verify.stderr[-3000:]
  # Export needs training: refused with the install command, not an ImportError.
  export = _without_training_stack(tmp_path, "ich_jax.bundle", "export", "--run", runs["cls"])
  assert export.returncode != 0 and 'pip install "ich-jax[train]"' in export.stderr
  assert "missing here: orbax, tensorflow_datasets, array_record, grain." in export.stderr


def test_training_without_the_train_extra_names_the_install(monkeypatch):
  monkeypatch.setattr(extras, "missing", lambda modules=extras.TRAIN_MODULES: ["grain", "orbax"])
  with pytest.raises(SystemExit, match=r'missing here: grain, orbax\. Install it with: pip install "ich-jax\[train\]"'):
    launch.cli()


def test_a_config_path_not_found_here_is_the_installed_configs_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = ROOT / "configs" / "quickstart.py"
  assert launch.packaged_config("configs/quickstart.py:smoke") == f"{packaged}:smoke"
  assert launch.packaged_config("quickstart") == str(packaged)
  assert launch.with_packaged_configs(["x", "--config", "quickstart.py", "--sweep=configs/quickstart_sweep.py:ci",
                                       "--config.train.num_steps=3"]) == [
      "x", "--config", str(packaged), f"--sweep={ROOT / 'configs' / 'quickstart_sweep.py'}:ci",
      "--config.train.num_steps=3"]
  # A file that exists here wins; an unknown name is left for config_flags to report.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "quickstart.py").write_text("")
  assert launch.packaged_config("configs/quickstart.py") == "configs/quickstart.py"
  assert launch.packaged_config("configs/nope.py") == "configs/nope.py"
