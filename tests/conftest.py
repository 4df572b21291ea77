"""Test-wide set-up: 8 virtual CPU devices (multi-device code paths), a tiny built dataset, run folders and their
bundles (`runs`, and a detector's: `detection_run`, for tests/bundle and tests/test_predict.py)."""
import os

# Must precede the first JAX import of the session: the data-parallel mesh then
# spans 8 devices, as on an 8-GPU host.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def runs(tiny_data_dir, tmp_path_factory):
  """A classifier run (quickstart smoke) exported through launch.py; a U-Net run exported by export_bundle;
  and the pair combined: probabilities from the classifier, the mask from the U-Net. Built once per session
  for the bundle's tests (tests/bundle) and prediction's (tests/test_predict.py)."""
  import subprocess
  import sys

  import jax

  from configs import quickstart
  from configs import segmentation as seg_config
  from ich_jax import bundle as bundle_lib
  from ich_jax.bundle import export
  from tests.fake_runs import make_run

  root = tmp_path_factory.mktemp("runs")
  cls = quickstart.get_config("smoke")
  cls.dataset.data_dir = tiny_data_dir
  seg = seg_config.get_config("unet:smoke")
  seg.dataset.data_dir = tiny_data_dir
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")   # eager init is a fifth as slow (tests/train/test_segmentation)
  try:
    make_run(cls, root / "cls", 0)
    make_run(seg, root / "seg", 1)
  finally:
    jax.config.update("jax_default_prng_impl", old)
  run = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", "configs/quickstart.py:smoke",
                        f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={root / 'cls'}", "--mode=export",
                        f"--out={root / 'cls_bundle'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Exported bundle (1 member: cls)" in run.stdout
  export.export_bundle(seg, root / "seg")
  bundle_lib.combine(root / "pair", average=[root / "cls_bundle"], mask=root / "seg" / "bundle")
  return {"cls_config": cls, "cls": root / "cls", "cls_bundle": bundle_lib.load(root / "cls_bundle"),
          "pair": bundle_lib.load(root / "pair"), "root": root}


@pytest.fixture(scope="session")
def detection_run(tiny_data_dir, tmp_path_factory):
  """Seed 001's Mask R-CNN (configs/hybrid_maskrcnn.py:smoke) as a run folder (`make_run`: initial weights, as
  `runs` makes its runs) and its bundle (export_bundle). Untrained, every class scores about 1/5, so the
  operating threshold and the instance-mask score threshold are set to 0.1: boxes are listed and masks pasted,
  and each output has content a wrong mapping would change."""
  import jax

  from configs import hybrid_maskrcnn
  from ich_jax import bundle as bundle_lib
  from ich_jax.bundle import export
  from tests.fake_runs import make_run

  root = tmp_path_factory.mktemp("detection")
  config = hybrid_maskrcnn.get_config("smoke")
  config.dataset.data_dir = tiny_data_dir
  config.eval.threshold = 0.1
  config.task.mask_score_threshold = 0.1
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    make_run(config, root / "det", 3)
  finally:
    jax.config.update("jax_default_prng_impl", old)
  export.export_bundle(config, root / "det")
  return {"config": config, "run": root / "det", "bundle": bundle_lib.load(root / "det" / "bundle"), "root": root}
