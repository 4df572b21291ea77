"""`configs/x.py:ARG`: one parser for every config's argument, both separators, flags, typed keys, one model."""
import pytest

from configs.common import parse_arg


def test_flags_models_and_typed_keys_in_either_spelling():
  spec = dict(config="configs/x.py", models=("seq_gru_1", "seq_gru_2"), smoke=False, fold=(None, int))
  assert parse_arg(None, **spec).to_dict() == {"model": "seq_gru_1", "smoke": False, "fold": None}
  assert parse_arg("seq_gru_2,smoke", **spec).to_dict() == parse_arg("smoke:seq_gru_2", **spec).to_dict() == {
      "model": "seq_gru_2", "smoke": True, "fold": None}
  assert parse_arg("seq_gru_1,fold=3", **spec).fold == 3
  assert parse_arg("", config="configs/y.py", smoke=False, image=False).to_dict() == {"smoke": False, "image": False}


@pytest.mark.parametrize("arg, message", [
    ("smok", r"configs/x.py: unknown argument 'smok' in 'smok'; expected one of \('unet', 'fpn'\), 'smoke', "
             r"'fold=<int>'"),
    ("unet:fpn", r"configs/x.py: argument 'unet:fpn' names 2 models \['unet', 'fpn'\]"),
    ("fold=two", r"configs/x.py: argument 'fold=two' in 'fold=two': 'two' cannot be read as int"),
    ("smoke=1", r"unknown argument 'smoke=1'"),
], ids=["unknown", "two models", "not an int", "a flag with a value"])
def test_what_a_config_does_not_take_is_named(arg, message):
  with pytest.raises(ValueError, match=message):
    parse_arg(arg, config="configs/x.py", models=("unet", "fpn"), smoke=False, fold=(None, int))
