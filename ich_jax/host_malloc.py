"""Process-wide glibc malloc settings for the input pipeline: applied by launch.py and benchmarks/input_pipeline.py.

Every training batch allocates fresh buffers of 64 kB to 25 MB: each record's
decompressed bytes (~200 kB for a 256² slice with its mask), the batch arrays.
By default glibc serves allocations above 128 kB (a threshold that adapts
upwards) with their own mmap and gives freed memory at the top of a heap back
to the kernel past 128 kB, so most of these buffers arrive as new pages: about
75 page faults per 256² slice, a third of the host's time per slice with
preprocessing on the device (docs/PERFORMANCE.md, Input pipeline). With the
thresholds below, freed buffers are reused instead. The cost: freed memory up
to TRIM_THRESHOLD per malloc arena (one per allocating thread, so per grain
read thread) stays with the process instead of going back to the kernel.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import MutableMapping

# mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest value glibc accepts for the mmap threshold on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 128 * 2**20
# The same settings for processes started from this one (grain's worker processes).
TUNABLES = (("glibc.malloc.mmap_threshold", MMAP_THRESHOLD), ("glibc.malloc.trim_threshold", TRIM_THRESHOLD))


def apply(env: MutableMapping[str, str] = os.environ) -> bool:
  """Sets the thresholds in this process (mallopt) and for its children (GLIBC_TUNABLES).

  Settings the user already made (GLIBC_TUNABLES or MALLOC_MMAP_THRESHOLD_ /
  MALLOC_TRIM_THRESHOLD_ in the environment) are left as they are. Returns
  False where the C library is not glibc (nothing is changed then).
  """
  try:
    os.confstr("CS_GNU_LIBC_VERSION")  # raises off glibc
    mallopt = ctypes.CDLL(None).mallopt
  except (ValueError, OSError, AttributeError):
    return False
  current = env.get("GLIBC_TUNABLES", "")
  present = {t.split("=", 1)[0] for t in current.split(":") if t}
  if "MALLOC_MMAP_THRESHOLD_" in env:
    present.add("glibc.malloc.mmap_threshold")
  if "MALLOC_TRIM_THRESHOLD_" in env:
    present.add("glibc.malloc.trim_threshold")
  added = [(name, value) for name, value in TUNABLES if name not in present]
  option = {"glibc.malloc.mmap_threshold": _M_MMAP_THRESHOLD, "glibc.malloc.trim_threshold": _M_TRIM_THRESHOLD}
  if not all(mallopt(option[name], value) == 1 for name, value in added):
    return False
  if added:
    env["GLIBC_TUNABLES"] = ":".join([t for t in current.split(":") if t] + [f"{n}={v}" for n, v in added])
  return True
