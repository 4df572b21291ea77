"""Process-wide XLA settings: the one place they are chosen, applied by launch.py and benchmarks/models.py.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `apply()` must
run before any JAX computation. A flag the user already put in XLA_FLAGS is
left as the user set it. Each flag is here because of a measurement in
docs/PERFORMANCE.md ("Models"); it is an XLA:CPU flag, set only when JAX
runs on the CPU and only when the installed jaxlib accepts it (XLA aborts on
a flag it does not know: another jaxlib may not have an experimental one).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, MutableMapping

# jaxlib 0.10's XLA:CPU runs convolutions through YNNPACK by default; through
# Eigen instead (YNNPACK keeps the matrix products, where it is the faster
# library) a jitted train step runs 1.4× faster for DenseNet-121 and 1.9× for
# the U-Net on our 2-core CPUs, inference 1.4× for DenseNet-121.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

log = logging.getLogger("ich_jax")


# Installed accelerator plugins: with one, JAX's default backend is not the CPU, and CPU_FLAGS tune nothing
# that runs (they are left out).
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
_PROBE = "import jax; jax.devices('cpu')"


def on_cpu(env: Mapping[str, str] = os.environ) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS names cpu first, or is unset with no accelerator plugin."""
  platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  return not any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_PLUGINS)


def _cache_file(env: Mapping[str, str]) -> pathlib.Path:
  root = env.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
  return pathlib.Path(root) / "ich-jax" / "xla_flags.json"


def accepted(flag: str, env: Mapping[str, str] = os.environ) -> bool:
  """Whether the installed jaxlib's XLA knows `flag`: XLA aborts the whole process on a flag it does not know,
  so a child process starts the CPU backend with it once per jaxlib version and flag (a few seconds), and
  the answer is kept in ~/.cache/ich-jax/xla_flags.json (XDG_CACHE_HOME)."""
  from importlib import metadata

  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return False
  key = f"jaxlib {version} {flag.split('=', 1)[0]}"
  path = _cache_file(env)
  try:
    cache = json.loads(path.read_text())
  except (OSError, ValueError):
    cache = {}
  if key in cache:
    return bool(cache[key])
  child = {k: v for k, v in env.items() if k != "XLA_FLAGS"}
  child.update(XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  try:
    ok = subprocess.run([sys.executable, "-c", _PROBE], env=child, capture_output=True, timeout=300).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False                                   # not known: not kept either, asked again next time
  try:
    from ich_jax import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({**cache, key: ok}, indent=2, sort_keys=True))
  except OSError:
    pass                                           # a read-only home: probed again next time
  return ok


def apply(env: MutableMapping[str, str] = os.environ, flags: tuple[str, ...] = CPU_FLAGS) -> str:
  """Appends to env["XLA_FLAGS"] each of `flags` whose name is not there yet, when JAX will run on the CPU
  (`on_cpu`) and the installed jaxlib accepts it (`accepted`; a flag it does not know is left out with a
  warning); returns the new value."""
  current = env.get("XLA_FLAGS", "")
  if not on_cpu(env):
    return current
  present = {f.split("=", 1)[0] for f in current.split()}
  added = []
  for f in flags:
    if f.split("=", 1)[0] in present:
      continue
    if accepted(f, env):
      added.append(f)
    else:
      log.warning("XLA flag %s left out: the installed jaxlib does not accept it", f)
  env["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
  return env["XLA_FLAGS"]
