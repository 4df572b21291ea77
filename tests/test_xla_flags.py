"""The XLA flags launch.py and predict set before a backend starts: appended once, a user's own setting kept,
only on the CPU and only when the installed jaxlib accepts the flag (XLA aborts on one it does not know)."""
import json
import subprocess
import sys

import pytest

from ich_jax import xla_flags

UNKNOWN = "--xla_cpu_no_such_flag_ich_jax_test=1"


@pytest.fixture
def env(tmp_path):
  return {"JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_xla_flags_apply_appends_once_and_keeps_the_users_setting(env):
  flag = xla_flags.CPU_FLAGS[0]
  name = flag.split("=")[0]
  assert xla_flags.apply(env) == flag
  assert xla_flags.apply(env) == flag
  e = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {name}="}
  assert xla_flags.apply(e) == f"--xla_force_host_platform_device_count=8 {name}="
  e = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.apply(e) == f"--xla_force_host_platform_device_count=8 {flag}"


def test_a_flag_the_installed_jaxlib_does_not_know_is_left_out_and_the_answer_kept(env, monkeypatch, caplog):
  # What XLA does with it: the process aborts before JAX has a device.
  child = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], capture_output=True,
                         env={"XLA_FLAGS": UNKNOWN, "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert child.returncode != 0
  e = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_flags.apply(e, flags=(UNKNOWN,)) == "--xla_force_host_platform_device_count=2"
  assert "left out" in caplog.text
  cache = json.loads((xla_flags._cache_file(env)).read_text())
  assert [v for k, v in cache.items() if k.endswith("--xla_cpu_no_such_flag_ich_jax_test")] == [False]
  # Asked again: answered from the cache, no child process.
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("probed again"))
  assert not xla_flags.accepted(UNKNOWN, env)


def test_cpu_flags_are_not_set_when_jax_runs_on_an_accelerator(env, monkeypatch):
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no probe needed"))
  e = {**env, "JAX_PLATFORMS": "cuda,cpu", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}
  assert xla_flags.apply(e) == "--xla_gpu_enable_latency_hiding_scheduler=true"
  assert not xla_flags.on_cpu({"JAX_PLATFORMS": "tpu"}) and xla_flags.on_cpu({"JAX_PLATFORMS": "cpu"})
