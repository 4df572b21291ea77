"""`data_builders.build_report`: what a build skipped and noticed, its counts, as JSON and as a summary (a real
build's report: tests/data_builders/test_rsna_ich.py)."""
import json
import pathlib

from data_builders.build_report import REPORT_FILE, BuildReport, Result, reason


def _report() -> BuildReport:
  report = BuildReport("rsna_ich/slices")
  report.skip(pathlib.Path("/d/b.dcm"), "no pixel data")
  report.note("/d/c.dcm", "RescaleIntercept missing; 0 assumed")
  # Two workers' results; the same file skipped twice is listed once.
  report.add(Result(skipped=[(pathlib.Path("/d/a.dcm"), "truncated"), ("/d/b.dcm", "no pixel data")],
                    notes=[("/d/c.dcm", "RescaleIntercept missing; 0 assumed")]))
  report.count("train", "slices", 3)
  report.count("train", "slices")
  report.count("train", "studies")
  report.count("test", "slices", 2)
  report.count("validation", "slices", 0)             # nothing counted: no empty split in the report
  report.sections["labels"] = {"file": pathlib.Path("/d/labels.csv")}
  return report


def test_to_dict_lists_each_skip_and_note_once_sorted_with_counts_per_split():
  assert _report().to_dict() == {
      "dataset": "rsna_ich/slices",
      "skipped": [{"file": "/d/a.dcm", "reason": "truncated"}, {"file": "/d/b.dcm", "reason": "no pixel data"}],
      "notes": [{"file": "/d/c.dcm", "note": "RescaleIntercept missing; 0 assumed"}],
      "counts": {"test": {"slices": 2}, "train": {"slices": 4, "studies": 1}},
      "labels": {"file": pathlib.Path("/d/labels.csv")},
  }


def test_write_gives_json_and_the_summary_names_the_skips(tmp_path):
  report = _report()
  report.write(tmp_path / REPORT_FILE)
  written = json.loads((tmp_path / REPORT_FILE).read_text())
  assert written["labels"] == {"file": "/d/labels.csv"} and written["counts"]["train"] == {"slices": 4, "studies": 1}
  assert report.summary().splitlines() == [
      "rsna_ich/slices: test 2 slices; train 4 slices, 1 studies",
      "  2 skipped, 1 notes (all in build_report.json)",
      "  skipped /d/a.dcm: truncated",
      "  skipped /d/b.dcm: no pixel data",
  ]
  assert report.summary(limit=1).splitlines()[2:] == ["  skipped /d/a.dcm: truncated", "  ... and 1 more skipped"]


def test_reason_drops_the_leading_file_name():
  path = pathlib.Path("/d/a.dcm")
  assert reason(ValueError(f"{path}: BitsStored 13"), path) == "BitsStored 13"
  assert reason(ValueError("BitsStored 13 in /d/a.dcm"), path) == "BitsStored 13 in /d/a.dcm"
