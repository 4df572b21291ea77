"""config.json on a rerun: changes that would alter the run refused (named, old and new), others recorded."""
import json

import pytest

from ich_jax.train import config_record, loop


def _config(**changes):
  from configs import quickstart

  config = quickstart.get_config("smoke")
  with config.unlocked():
    for key, value in changes.items():
      *parents, last = key.split(".")
      section = config
      for p in parents:
        section = section[p]
      section[last] = value
  return config


def test_differences_are_dotted_keys_and_only_no_effect_keys_pass():
  old = config_record.as_json(_config())
  new = config_record.as_json(_config(**{"optimizer.learning_rate": 0.01, "model.options.widths": (8, 32),
                                          "train.log_every": 5, "eval.threshold": 0.3, "data.extra": 1}))
  changes = config_record.differences(old, new)
  assert changes == {"data.extra": ("(absent)", 1), "eval.threshold": (0.5, 0.3),
                     "model.options.widths": ([8, 16], [8, 32]), "optimizer.learning_rate": (0.001, 0.01),
                     "train.log_every": (2, 5)}
  assert [k for k in changes if config_record.has_effect(k)] == ["data.extra", "model.options.widths",
                                                                 "optimizer.learning_rate"]
  # Tuples (the config) and lists (its JSON) are the same value; an empty section filled is a change.
  assert config_record.differences(json.loads(json.dumps(old)), config_record.as_json(_config())) == {}
  assert config_record.differences({"m": {"options": {}}}, {"m": {"options": {"a": 1}}}) == {
      "m.options": ({}, "(absent)"), "m.options.a": ("(absent)", 1)}
  assert not config_record.has_effect("eval.n_boot") and config_record.has_effect("evaluation.x")


def test_a_changed_rerun_is_refused_or_recorded_and_config_json_still_reads_as_the_config(tmp_path):
  first = _config()
  assert config_record.record(tmp_path, first, at_step=0) is None
  written = (tmp_path / "config.json").read_text()
  assert json.loads(written) == config_record.as_json(first)
  # Another learning rate on a workdir with checkpoints: refused, the file untouched.
  with pytest.raises(config_record.ConfigChanged) as refused:
    config_record.record(tmp_path, _config(**{"optimizer.learning_rate": 0.01, "seed": 3, "train.log_every": 5}),
                         at_step=6)
  message = str(refused.value)
  assert message.startswith(f"{tmp_path / 'config.json'}: this workdir holds checkpoints up to step 6")
  assert "\n  optimizer.learning_rate: 0.001 -> 0.01\n  seed: 0 -> 3\n" in message
  assert "log_every" not in message.split("Keys that may")[0] and "--allow_config_change" in message
  assert (tmp_path / "config.json").read_text() == written
  # Without a checkpoint yet the record still says what the workdir was started with.
  with pytest.raises(config_record.ConfigChanged, match="was started with another config \\(no checkpoint yet\\)"):
    config_record.record(tmp_path, _config(seed=3), at_step=0)
  # Logging every 5 steps instead of 2: accepted and recorded.
  entry = config_record.record(tmp_path, _config(**{"train.log_every": 5}), at_step=6)
  assert entry["changes"] == {"train.log_every": [2, 5]} and entry["how"] == "no effect on the run"
  assert entry["at_step"] == 6
  # The new learning rate with the flag: accepted, recorded with how.
  entry = config_record.record(tmp_path, _config(**{"train.log_every": 5, "optimizer.learning_rate": 0.01}),
                               at_step=8, allow_change=True)
  assert entry["changes"] == {"optimizer.learning_rate": [0.001, 0.01]} and entry["how"] == "--allow_config_change"
  body = json.loads((tmp_path / "config.json").read_text())
  assert [(h["at_step"], h["how"]) for h in body["config_history"]] == [(6, "no effect on the run"),
                                                                         (8, "--allow_config_change")]
  # Readers of the config see the newest config, as tuples, without the history.
  read = loop.read_config(tmp_path)
  assert "config_history" not in read and read.optimizer.learning_rate == 0.01 and read.train.log_every == 5
  assert read.model.options.widths == (8, 16)
  # A record the rerun cannot read is named, not overwritten.
  (tmp_path / "config.json").write_text(written[:40])
  with pytest.raises(ValueError, match="config.json: not valid JSON"):
    config_record.record(tmp_path, first, at_step=6)
  assert (tmp_path / "config.json").read_text() == written[:40]
