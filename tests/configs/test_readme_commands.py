"""The README's seed-experiment commands parse as launch.py parses them, and their experiments plan every stage.

Each `python launch.py --config ...` line of the README's paper-table table is read with launch.py's own flag
definition (ml_collections' config file flag: an override of a field the config lacks is an error), then the
experiment's stages are planned (`experiments.stages`: folds, exports, external sets; nothing trained). The
end-to-end runs on the builders' fixtures are the experiments' own tests (tests/experiments/).
"""
import pathlib
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from ich_jax import experiments

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
  text = (ROOT / "README.md").read_text()
  table = text.split("| paper table | dataset and split | command |")[1].split("\n\n")[0]
  return re.findall(r"`(python launch\.py [^`]+)`", table)


def _parse(command: str):
  argv = shlex.split(command)[1:]                   # launch.py --config ... --workdir ... --config.x=y ...
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv)
  return fv.config, fv.workdir


COMMANDS = _readme_commands()


def test_the_readme_lists_one_command_per_paper_table():
  assert len(COMMANDS) == 5                        # seed 003 Table 4 is the Table 3 run's
  assert {re.search(r"configs/(\w+)\.py", c)[1] for c in COMMANDS} == {
      "rsna_cascade", "strong_vs_weak", "weighted_ensemble", "physionet_patch_unet", "hybrid_maskrcnn"}


@pytest.mark.parametrize("command", COMMANDS, ids=[re.search(r"--workdir (\S+)", c)[1] for c in COMMANDS])
def test_a_readme_command_parses_and_plans_its_stages(command, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)                           # the config paths are relative to the repository
  config, workdir = _parse(command)
  assert config.dataset.name in ("rsna_ich", "physionet_ct_ich")
  assert config.dataset.manual_dir.startswith("/data/")
  if config.get("experiment") is None:
    return                                          # a single run (the detector): its flags parsed
  stages = experiments.stages(config, tmp_path / workdir)
  assert stages
  external = config.experiment.get("external", "")
  if external:
    # Every model exports the named sets, their downloads given.
    assert stages[-1].name == "external"
    sets = [e for s in stages if s.config is not None and s.config.get("export")
            for e in s.config.export.get("external", ())]
    assert sets and all(e["manual_dir"].startswith("/data/") for e in sets)
