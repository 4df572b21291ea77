"""report.md and the printed table: every section from the metrics, and a missing number spelled once."""
import math

from ich_jax.eval import classification, report_text
from ich_jax.eval.formatting import MISSING
from tests.eval import fake_predictions as fake


def test_markdown_and_console_print_missing_numbers_alike():
  preds = fake.preds(seed=3)
  preds["labels"][:, 1] = 0            # no epidural slice: its AUC and sensitivity do not exist
  m = classification.classification_metrics(preds, n_boot=0)
  assert math.isnan(m["scan"]["epidural"]["auc"])
  md = report_text.format_markdown(m, title="T", figures=["roc_scan.png"])
  assert f"| epidural | 0/24 | {MISSING} | {MISSING} |" in md and "NA" not in md.split()
  for heading in ("## Scan level: detection per class", "## Slice level by hemorrhage type and size",
                  "## Threshold sweep, any hemorrhage", "## Difficult scans", "## Other", "![roc_scan.png]"):
    assert heading in md
  table = report_text.format_table(m)
  assert [line for line in table.splitlines() if line.startswith("epidural ")][0].split()[1] == MISSING
  assert f"   {MISSING}" in table    # as wide as a number: the columns stay aligned


def test_the_comparison_section_gives_differences_and_p_values():
  a, b = fake.preds(seed=4), fake.preds(seed=5, noise=2.5)
  m = classification.classification_metrics(a, compare=b, names=("a", "b"), n_boot=0)
  md = report_text.format_markdown(m)
  section = md.split("## Comparison: a vs b (DeLong test, two-sided)")[1]
  e = m["comparison"]["scan"]["any"]
  assert f"| any | {e['auc_a']:.3f} | {e['auc_b']:.3f} | {e['auc_a'] - e['auc_b']:+.3f} | {e['z']:.2f} |" in section
