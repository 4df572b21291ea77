"""The plan read from `config.data`: what it refuses."""

import pytest

from ich_jax.data import pipeline
from tests.data.slice_fakes import data_cfg, fake_source


def test_unknown_intensity_is_rejected():
  with pytest.raises(ValueError, match="intensity"):
    pipeline.train_iterator(fake_source(), data_cfg(intensity="hu"), global_batch_size=2, seed=0)
