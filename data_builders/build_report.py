"""The build report: every file a build skipped (file, reason) and every data quirk worth knowing (notes).

Saved as `build_report.json` next to the dataset (in the version folder,
beside `dataset_info.json`) and summarised when the build ends. One bad file
never stops a build; a label that cannot be joined to an image (or the
reverse) does, naming both.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib

REPORT_FILE = "build_report.json"


@dataclasses.dataclass
class Result:
  """What one worker task returns: its examples and what it skipped or noticed."""
  examples: list = dataclasses.field(default_factory=list)     # [(key, example dict)]
  skipped: list = dataclasses.field(default_factory=list)      # [(file, reason)]
  notes: list = dataclasses.field(default_factory=list)        # [(file, message)]
  extra: dict = dataclasses.field(default_factory=dict)        # builder-specific, read by the parent


class BuildReport:
  """Skipped files (file, reason), notes, counts and builder sections; written as JSON."""

  def __init__(self, name: str):
    self.name = name
    self.skipped: list[tuple[str, str]] = []
    self.notes: list[tuple[str, str]] = []
    self.counts: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    self.sections: dict[str, object] = {}

  def skip(self, file, reason: str) -> None:
    self.skipped.append((str(file), reason))

  def note(self, file, message: str) -> None:
    self.notes.append((str(file), message))

  def add(self, result: Result) -> None:
    self.skipped.extend((str(f), r) for f, r in result.skipped)
    self.notes.extend((str(f), m) for f, m in result.notes)

  def count(self, split: str, what: str, n: int = 1) -> None:
    if n:
      self.counts[split][what] += n

  def to_dict(self) -> dict:
    return {
        "dataset": self.name,
        "skipped": [{"file": f, "reason": r} for f, r in sorted(set(self.skipped))],
        "notes": [{"file": f, "note": m} for f, m in sorted(set(self.notes))],
        "counts": {s: dict(c) for s, c in sorted(self.counts.items())},
        **self.sections,
    }

  def write(self, path) -> None:
    pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")

  def summary(self, limit: int = 20) -> str:
    d = self.to_dict()
    lines = [f"{self.name}: " + "; ".join(
        f"{split} " + ", ".join(f"{n:,} {what}" for what, n in sorted(c.items())) for split, c in d["counts"].items())]
    lines.append(f"  {len(d['skipped'])} skipped, {len(d['notes'])} notes (all in {REPORT_FILE})")
    for item in d["skipped"][:limit]:
      lines.append(f"  skipped {item['file']}: {item['reason']}")
    if len(d["skipped"]) > limit:
      lines.append(f"  ... and {len(d['skipped']) - limit} more skipped")
    return "\n".join(lines)


def reason(error: Exception, path) -> str:
  """The error message without the leading file name (the report has a file column)."""
  msg = str(error)
  prefix = f"{path}: "
  return msg[len(prefix):] if msg.startswith(prefix) else msg
