"""Metric logging: JSON lines plus TensorBoard event files, without TensorFlow.

The event file is TFRecord framing around `Event` protocol buffers; the few
fields needed for scalars are encoded here by hand (wire format) so that
TensorBoard reads the run while TensorFlow is never imported.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import socket
import struct
import time
from typing import Mapping

from ich_jax import atomic

log = logging.getLogger("ich_jax.train")

_CRC_TABLE: list[int] | None = None


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
  global _CRC_TABLE
  if _CRC_TABLE is None:
    table = []
    for i in range(256):
      c = i
      for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
      table.append(c)
    _CRC_TABLE = table
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  """The CRC a TFRecord frame stores: CRC32-C rotated and offset (TensorFlow's `MaskedCrc`), which readers check."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _scalar_value(tag: str, value: float) -> bytes:
  # Summary.Value: tag = 1 (string), simple_value = 2 (float, fixed32).
  return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """Event proto: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    summary = b"".join(_field_bytes(1, _scalar_value(k, float(v))) for k, v in scalars.items())
    out += _field_bytes(5, summary)
  return out


def frame_record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class SummaryWriter:
  """Appends scalars to `<dir>/metrics.jsonl` and a TensorBoard event file in `<dir>`.

  Only process 0 writes (`enabled=False` elsewhere). Each row is flushed and
  fsynced as it is written, so a kill loses at most the row being written, as
  a line without its newline. On open the file is repaired once (`repair_jsonl`):
  that partial line goes, and so do rows beyond `start_step`, the step training
  resumes from (logged after that checkpoint, they are logged again), so the
  file holds each step once, as an uninterrupted run would.
  """

  def __init__(self, directory: str | pathlib.Path, *, enabled: bool = True, start_step: int | None = None):
    self.enabled = enabled
    self.directory = pathlib.Path(directory)
    if not enabled:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self.directory / "metrics.jsonl"
    repair_jsonl(path, start_step)
    self._jsonl = open(path, "a")
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self._events = open(self.directory / name, "ab")
    self._events.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": int(step), **{k: (v if math.isfinite(v) else None)
                                                         for k, v in clean.items()}}) + "\n")
    self._jsonl.flush()
    os.fsync(self._jsonl.fileno())
    self._events.write(frame_record(encode_event(time.time(), int(step), scalars=clean)))
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


def parse_jsonl(text: str, path: str | pathlib.Path, *, drop_bad: bool = False) -> tuple[list[dict], int]:
  """The rows of a metrics.jsonl's `text`, and how many lines were dropped.

  A last line without its newline is a row cut short (by a kill, or being
  written as it is read) and is dropped. Rows are appended whole and fsynced,
  so any other line that is not JSON comes from elsewhere (a file appended to
  by an older writer after such a cut): an error naming the file and the line,
  or dropped with `drop_bad`.
  """
  lines = text.split("\n")
  # After the final newline split leaves "" (a complete file), else the start of the row being written.
  dropped = int(lines.pop() != "")
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError as e:
      if not drop_bad:
        raise ValueError(f"{path}: line {number} is not a JSON row ({e}): {line[:80]!r}") from e
      log.warning("%s: line %d is not a JSON row, dropped: %r", path, number, line[:80])
      dropped += 1
  return rows, dropped


def repair_jsonl(path: str | pathlib.Path, start_step: int | None = None) -> None:
  """Drops a cut-short last line (and lines that are not rows) and, given `start_step`, the rows of later
  steps; rewrites the file atomically, once, only when something is dropped."""
  path = pathlib.Path(path)
  if not path.is_file():
    return
  rows, dropped = parse_jsonl(path.read_text(), path, drop_bad=True)
  keep = [r for r in rows if start_step is None or r["step"] <= start_step]
  if dropped or len(keep) < len(rows):
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def read_jsonl(path: str | pathlib.Path) -> dict[int, dict]:
  """Rows of a metrics.jsonl by step (a row still being written is not one yet); a step logged twice (a
  file from before `repair_jsonl`) keeps its last row."""
  rows, _ = parse_jsonl(pathlib.Path(path).read_text(), path)
  return {row["step"]: row for row in rows}
