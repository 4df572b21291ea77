"""The XLA flags launch.py sets before a backend starts: appended once, a user's own setting kept."""
from ich_jax import xla_flags


def test_xla_flags_apply_appends_once_and_keeps_the_users_setting():
  flag = xla_flags.CPU_FLAGS[0]
  name = flag.split("=")[0]
  env = {}
  assert xla_flags.apply(env) == flag
  assert xla_flags.apply(env) == flag
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {name}="}
  assert xla_flags.apply(env) == f"--xla_force_host_platform_device_count=8 {name}="
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.apply(env) == f"--xla_force_host_platform_device_count=8 {flag}"
