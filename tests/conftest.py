"""Test-wide set-up: 8 virtual CPU devices (multi-device code paths), a tiny built dataset."""
import os

# Must precede the first JAX import of the session: the data-parallel mesh then
# spans 8 devices, as on an 8-GPU host.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """`synthetic_ich/tiny` built once per session into a temporary TFDS data_dir."""
  from ml_collections import ConfigDict

  from ich_jax.data import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  datasets.ensure_built(ConfigDict({"name": "synthetic_ich", "config": "tiny", "data_dir": str(data_dir)}))
  return str(data_dir)


@pytest.fixture
def smoke_config(tiny_data_dir):
  """The quickstart's smoke variant pointed at the session's tiny dataset."""
  from configs import quickstart

  config = quickstart.get_config("smoke")
  config.dataset.data_dir = tiny_data_dir
  return config
