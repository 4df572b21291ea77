"""Report numbers: one spelling for a missing number, wherever it comes from."""
import math

from ich_jax.eval import formatting as F


def test_a_missing_number_reads_the_same_from_nan_none_and_every_formatter():
  for missing in (None, math.nan, float("nan")):
    assert F.number(missing) == F.number(missing, "+.2f") == F.percent(missing) == F.p_value(missing) == F.MISSING
    assert F.auc_ci({"auc": missing, "auc_ci": [0.1, 0.2]}) == F.MISSING
  assert F.MISSING == "n/a"


def test_numbers_intervals_and_p_values():
  assert F.number(0.95349) == "0.953" and F.number(-0.0312, "+.2f") == "-0.03" and F.percent(0.9534) == "95.3"
  assert F.auc_ci({"auc": 0.9, "auc_ci": [0.85, 0.95]}) == "0.900 [0.850–0.950]"
  # metrics.json holds a NaN interval (no bootstrap) as nulls, or has none at all: the AUC alone.
  assert F.auc_ci({"auc": 0.9, "auc_ci": [None, None]}) == F.auc_ci({"auc": 0.9}) == "0.900"
  assert F.p_value(0.01234) == "0.0123" and F.p_value(3e-6) == "< 0.0001"
  assert F.md_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
