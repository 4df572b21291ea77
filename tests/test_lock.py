"""One writer per folder: a second process is refused with the holder's host and pid; a dead holder's lock is free."""
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from ich_jax import lock

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _holder(folder, **kw):
  """A child process that takes the lock of `folder` and waits (until killed)."""
  args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
  child = subprocess.Popen([sys.executable, "-c", f"""
import time
from ich_jax import lock
with lock.FolderLock({str(folder)!r}, {args}):
  print("held", flush=True)
  time.sleep(120)
"""], stdout=subprocess.PIPE, text=True, cwd=ROOT)
  assert child.stdout.readline().strip() == "held"
  return child


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
  folder = tmp_path / "run"
  child = _holder(folder, what="run folder")
  try:
    with pytest.raises(lock.Locked) as e:
      lock.FolderLock(folder, what="run folder").acquire()
    message = str(e.value)
    assert f"run: this run folder is being written by another ich-jax process, host {socket.gethostname()}, " \
           f"pid {child.pid}" in message
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  # The kernel dropped the dead holder's lock: taken again without deleting anything.
  assert (folder / lock.LOCK_NAME).exists()
  with lock.FolderLock(folder) as held:
    assert f'"pid": {os.getpid()}' in held.path.read_text()
  assert not (folder / lock.LOCK_NAME).exists()


def test_a_lock_beside_the_folder_for_outputs_swapped_whole(tmp_path):
  child = _holder(tmp_path / "out", beside=True)
  try:
    assert (tmp_path / ".out.ich-jax.lock").exists() and not (tmp_path / "out").exists()
    with pytest.raises(lock.Locked, match=f"pid {child.pid}"):
      lock.FolderLock(tmp_path / "out", beside=True).acquire()
    lock.FolderLock(tmp_path / "other", beside=True).acquire().release()   # another folder is free
  finally:
    child.kill()
    child.wait()


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
  with lock.FolderLock(tmp_path):
    with pytest.raises(lock.Locked):
      lock.FolderLock(tmp_path).acquire()


def test_a_second_launch_on_a_run_folder_is_refused_before_it_writes(tmp_path):
  workdir = tmp_path / "run"
  with lock.FolderLock(workdir, what="run folder"):
    run = subprocess.run([sys.executable, "launch.py", "--config", "configs/quickstart.py:smoke",
                          f"--workdir={workdir}", "--mode=eval"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
  assert run.returncode == 1
  assert f"error: {workdir}: this run folder is being written by another ich-jax process, " \
         f"host {socket.gethostname()}, pid {os.getpid()}" in run.stderr
  assert sorted(p.name for p in workdir.iterdir()) == []     # no config.eval.json, nothing else
