"""`ich_jax.host_malloc`: glibc's thresholds for this process and the processes it starts."""
import glob
import os
import subprocess

import pytest

from ich_jax import host_malloc


def test_apply_sets_the_thresholds_and_keeps_the_users_own():
  env = {}
  assert host_malloc.apply(env)  # the project's machines run glibc
  assert env["GLIBC_TUNABLES"] == (f"glibc.malloc.mmap_threshold={host_malloc.MMAP_THRESHOLD}:"
                                   f"glibc.malloc.trim_threshold={host_malloc.TRIM_THRESHOLD}")
  env = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4096", "MALLOC_MMAP_THRESHOLD_": "65536"}
  assert host_malloc.apply(env)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=4096"


def test_child_processes_start_with_the_thresholds():
  # grain's worker processes get them through the environment; glibc's loader lists what it parsed.
  loaders = sorted(glob.glob("/lib64/ld-linux-*.so.*") + glob.glob("/lib/*/ld-linux-*.so.*"))
  if not loaders:
    pytest.skip("no glibc dynamic loader found to list its tunables")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  host_malloc.apply(env)
  listed = subprocess.run([loaders[0], "--list-tunables"], env=env, capture_output=True, text=True).stdout
  if not listed:
    pytest.skip(f"{loaders[0]} cannot list tunables (glibc < 2.33)")
  assert f"glibc.malloc.mmap_threshold: 0x{host_malloc.MMAP_THRESHOLD:x} " in listed
  assert f"glibc.malloc.trim_threshold: 0x{host_malloc.TRIM_THRESHOLD:x} " in listed
