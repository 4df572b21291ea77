"""Process-wide XLA settings: the one place they are chosen, applied by launch.py and benchmarks/models.py.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so `apply()` must
run before any JAX computation. A flag the user already put in XLA_FLAGS is
left as the user set it. Each flag is here because of a measurement in
docs/PERFORMANCE.md ("Models").
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

# jaxlib 0.10's XLA:CPU runs convolutions through YNNPACK by default; through
# Eigen instead (YNNPACK keeps the matrix products, where it is the faster
# library) a jitted train step runs 1.4× faster for DenseNet-121 and 1.9× for
# the U-Net on our 2-core CPUs, inference 1.4× for DenseNet-121.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def apply(env: MutableMapping[str, str] = os.environ, flags: tuple[str, ...] = CPU_FLAGS) -> str:
  """Appends `flags` to env["XLA_FLAGS"] unless a flag of the same name is there; returns the new value."""
  current = env.get("XLA_FLAGS", "")
  present = {f.split("=", 1)[0] for f in current.split()}
  added = [f for f in flags if f.split("=", 1)[0] not in present]
  env["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
  return env["XLA_FLAGS"]
