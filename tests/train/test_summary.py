import json
import struct

import pytest

from ich_jax.train import summary


def test_crc32c_check_value():
  # The standard CRC-32C check value (RFC 3720 / iSCSI): crc32c("123456789").
  assert summary.crc32c(b"123456789") == 0xE3069283
  assert summary.crc32c(b"") == 0


def _read_records(path):
  data = path.read_bytes()
  records, pos = [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert len_crc == summary.masked_crc(data[pos:pos + 8])
    payload = data[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert crc == summary.masked_crc(payload)
    records.append(payload)
    pos += 16 + length
  return records


def test_event_encoding_known_bytes():
  # Hand-assembled Event{wall_time=1.5, step=300, summary{value{tag="a", simple_value=0.25}}}.
  expected = (b"\x09" + struct.pack("<d", 1.5) + b"\x10" + bytes([0xAC, 0x02])
              + b"\x2a\x0a" + b"\x0a\x08" + b"\x0a\x01a" + b"\x15" + struct.pack("<f", 0.25))
  assert summary.encode_event(1.5, 300, scalars={"a": 0.25}) == expected


def test_writer_jsonl_and_events(tmp_path):
  w = summary.SummaryWriter(tmp_path)
  w.scalars(10, {"loss": 0.5, "auc": 0.9})
  w.scalars(20, {"loss": 0.25, "auc": float("nan")})
  w.scalars(10, {"loss": 0.4, "auc": 0.8})  # a resumed run logs step 10 again
  w.close()
  rows = summary.read_jsonl(tmp_path / "metrics.jsonl")
  assert rows[10]["loss"] == 0.4 and rows[20]["loss"] == 0.25 and rows[20]["auc"] is None
  json.dumps(rows)  # NaN never reaches the JSON
  (events,) = list(tmp_path.glob("events.out.tfevents.*"))
  records = _read_records(events)
  assert len(records) == 4  # file_version + 3 scalar events
  assert b"brain.Event:2" in records[0]
  assert struct.pack("<f", 0.25) in records[2]


def test_disabled_writer_writes_nothing(tmp_path):
  w = summary.SummaryWriter(tmp_path / "x", enabled=False)
  w.scalars(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "x").exists()


def test_a_row_cut_short_by_a_kill_is_not_read_and_is_dropped_on_reopen(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
  # Read while training runs (or after a kill): the complete rows, not an error about the partial one.
  assert summary.read_jsonl(path) == {1: {"step": 1, "loss": 0.5}, 2: {"step": 2, "loss": 0.25}}
  w = summary.SummaryWriter(tmp_path)
  w.scalars(3, {"loss": 0.125})
  w.close()
  assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.125}\n'


def test_rows_after_the_resumed_checkpoint_are_dropped_once_and_logged_again(tmp_path):
  # Logged at steps 1..5, checkpointed at 3, killed: the resumed run logs 4 and 5 again, as the uninterrupted run.
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 6)))
  w = summary.SummaryWriter(tmp_path, start_step=3)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
  for s in (4, 5):
    w.scalars(s, {"loss": 1 / s})
  w.close()
  assert path.read_text() == "".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 6))
  # A fresh start (no checkpoint) keeps none of a crashed first attempt's rows.
  summary.SummaryWriter(tmp_path, start_step=0).close()
  assert path.read_text() == ""


def test_a_line_that_is_not_a_row_is_named_by_readers(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.1}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON row"):
    summary.read_jsonl(path)
  # The writer drops it on reopen (it comes from an older writer killed mid-row) rather than refuse to train.
  summary.SummaryWriter(tmp_path).close()
  assert summary.read_jsonl(path) == {1: {"step": 1, "loss": 0.5}, 3: {"step": 3, "loss": 0.1}}
