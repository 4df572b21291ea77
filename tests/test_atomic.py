"""Outputs replace only what ich-jax wrote, and a reader never sees a missing or half-written folder."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from ich_jax import atomic


def _write(directory, kind, **files):
  tmp = atomic.begin(directory, kind)
  for name, text in files.items():
    (tmp / name).write_text(text)
  return atomic.commit(tmp, directory)


def test_commit_replaces_our_folder_and_the_path_never_goes_missing(tmp_path, monkeypatch):
  out = tmp_path / "out"
  _write(out, "prediction", a="old")
  seen = []
  real_rename = pathlib.Path.rename

  def watched(self, target):
    result = real_rename(self, target)
    seen.append(out.is_dir())       # after every rename commit makes: does the destination still exist?
    return result

  monkeypatch.setattr(pathlib.Path, "rename", watched)
  _write(out, "prediction", b="new")
  assert all(seen), "the output folder was absent between two renames"
  assert sorted(p.name for p in out.iterdir()) == [atomic.MARKER, "b"]
  assert (out / "b").read_text() == "new"
  # Nothing is left beside it: the old folder and the temporary one are gone.
  assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_without_an_exchange_the_fallback_still_replaces(tmp_path, monkeypatch):
  out = tmp_path / "out"
  _write(out, "bundle", a="1")
  monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
  _write(out, "bundle", a="2")
  assert (out / "a").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_ich_jax_did_not_write_is_never_replaced(tmp_path):
  user = tmp_path / "incoming"
  (user / "s42").mkdir(parents=True)
  (user / "s42" / "IM0001").write_bytes(b"dicom")
  with pytest.raises(atomic.NotOurs, match=r"incoming: exists, is not empty and was not written by ich-jax"):
    atomic.begin(user, "prediction")
  assert (user / "s42" / "IM0001").read_bytes() == b"dicom"
  # Nor a file, nor another kind of ich-jax output (a prediction never replaces a bundle).
  (tmp_path / "f").write_text("x")
  with pytest.raises(atomic.NotOurs, match="a file or a link"):
    atomic.begin(tmp_path / "f", "prediction")
  _write(tmp_path / "b", "bundle", manifest="m")
  with pytest.raises(atomic.NotOurs, match="holds an ich-jax bundle output, not a prediction"):
    atomic.begin(tmp_path / "b", "prediction")
  # An empty folder (made by the user for the output) is fine.
  (tmp_path / "empty").mkdir()
  _write(tmp_path / "empty", "prediction", r="1")
  assert (tmp_path / "empty" / "r").read_text() == "1"


def test_outputs_of_older_versions_are_recognised_by_their_format(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "report.json").write_text(json.dumps({"format": "ich-jax-prediction"}))
  assert atomic.kind_of(old) == "prediction"
  _write(old, "prediction", report="new")
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "report.json").write_text(json.dumps({"format": "something else"}))
  assert atomic.kind_of(tmp_path / "mine") is None


def test_check_output_refuses_the_input_and_run_folders(tmp_path):
  incoming = tmp_path / "incoming"
  (incoming / "s42").mkdir(parents=True)
  for out, what in ((incoming / "s42", "is"), (incoming / "s42" / "out", "lies inside"), (incoming, "contains")):
    with pytest.raises(atomic.NotOurs, match=f"{what} the input"):
      atomic.check_output(out, "prediction", inputs=[incoming / "s42"])
  run = tmp_path / "runs" / "quickstart"
  (run / "checkpoints").mkdir(parents=True)
  for out in (run, tmp_path / "runs"):
    with pytest.raises(atomic.NotOurs, match="must not be replaced"):
      atomic.check_output(out, "bundle", protected=[run])
  assert atomic.check_output(run / "bundle", "bundle", protected=[run]) == (run / "bundle").resolve()


def test_only_leftovers_of_dead_ich_jax_writers_are_removed(tmp_path):
  out = tmp_path / "out"
  host = socket.gethostname()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  dead_pid = int(dead.stdout)
  stale = tmp_path / f".out.ich-jax-tmp.{host}.{dead_pid}.1"
  stale.mkdir()
  atomic.mark(stale, "prediction")
  live = tmp_path / f".out.ich-jax-tmp.{host}.{os.getpid()}.2"     # a writer still at work
  live.mkdir()
  atomic.mark(live, "prediction")
  users = tmp_path / "out.tmp"                                    # the user's own folder of that name
  users.mkdir()
  (users / "keep").write_text("x")
  impostor = tmp_path / f".out.ich-jax-tmp.{host}.{dead_pid}.3"     # our name, not our marker
  impostor.mkdir()
  _write(out, "prediction", a="1")
  assert not stale.exists() and live.exists() and (users / "keep").exists() and impostor.exists()


def test_a_killed_file_writer_leaves_the_old_content(tmp_path):
  target = tmp_path / "config.json"
  target.write_text('{"old": true}')
  child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from ich_jax import atomic
with atomic.open_write({str(target)!r}, "w") as f:
  f.write('{{"new": ')
  f.flush()
  print("half", flush=True)
  time.sleep(60)
  f.write('true}}')
"""], stdout=subprocess.PIPE, text=True, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert child.stdout.readline().strip() == "half"
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert target.read_text() == '{"old": true}'
  # Its hidden temporary file holds the half; the next write replaces the target whole and removes it.
  (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".config.json.ich-jax-tmp.")]
  assert leftover.read_text() == '{"new": '
  atomic.write_text(target, '{"new": true}')
  assert json.loads(target.read_text()) == {"new": True}
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failed_file_write_keeps_the_old_content_and_no_temporary(tmp_path):
  target = tmp_path / "m.json"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with atomic.open_write(target, "w") as f:
      f.write("partial")
      raise RuntimeError("disk full")
  assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_remove_deletes_only_our_outputs_of_that_kind(tmp_path):
  _write(tmp_path / "p", "prediction", a="1")
  (tmp_path / "u").mkdir()
  (tmp_path / "u" / "a").write_text("1")
  assert not atomic.remove(tmp_path / "u", "prediction") and (tmp_path / "u" / "a").exists()
  assert not atomic.remove(tmp_path / "p", "bundle") and (tmp_path / "p").exists()
  assert atomic.remove(tmp_path / "p", "prediction") and not (tmp_path / "p").exists()
