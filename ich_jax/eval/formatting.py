"""How reports print numbers: one spelling for a missing number, one markdown table layout.

Every table that an evaluation, an experiment, a sweep or a prediction writes goes through here, so a number
that does not exist (an AUC where one class is absent, a NaN that metrics.json holds as null) reads `MISSING`
everywhere: in report.md, on the console, in sweep.md and in a prediction's report.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MISSING = "n/a"


def is_missing(x) -> bool:
  """None (JSON's null: what metrics.json holds for NaN) or NaN."""
  return x is None or (isinstance(x, float) and math.isnan(x))


def number(x, spec: str = ".3f") -> str:
  """`x` formatted with `spec` (three decimals by default), or `MISSING`."""
  return MISSING if is_missing(x) else format(x, spec)


def percent(x, spec: str = ".1f") -> str:
  """A fraction as a percentage, one decimal by default (0.953 → "95.3"), or `MISSING`."""
  return MISSING if is_missing(x) else format(100 * x, spec)


def auc_ci(e: Mapping) -> str:
  """{"auc", "auc_ci"} → "0.953 [0.938–0.965]"; the AUC alone without an interval; `MISSING` without an AUC."""
  lo, hi = e.get("auc_ci") or (None, None)
  if is_missing(e["auc"]):
    return MISSING
  return f"{e['auc']:.3f}" if is_missing(lo) else f"{e['auc']:.3f} [{lo:.3f}–{hi:.3f}]"


def p_value(p) -> str:
  """A p-value with four decimals, "< 0.0001" below that, or `MISSING`."""
  if is_missing(p):
    return MISSING
  return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """The lines of a markdown table."""
  return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
          + ["| " + " | ".join(r) + " |" for r in rows])
