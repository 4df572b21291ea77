"""Shared by the experiment tests: one compilation cache and JAX's rbg generator while they run.

The experiments' stages compile the same train and predict programs for every
fold and backbone: a persistent cache (what `runner.run_stages` turns on for
an experiment's workdir) shared by this folder's tests makes each program
compile once. rbg: eager initialisation compiles one random kernel per
weight shape, a fifth as slow as with threefry; which generator draws the
initial weights is not under test.
"""
import jax
import pytest


@pytest.fixture(scope="package", autouse=True)
def shared_compile_cache(tmp_path_factory):
  from jax._src import compilation_cache

  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
         jax.config.jax_default_prng_impl)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("compile_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  jax.config.update("jax_default_prng_impl", old[2])
  compilation_cache.reset_cache()


@pytest.fixture(scope="package")
def svw(tiny_data_dir, cq500_fixture, tmp_path_factory):
  """configs/strong_vs_weak.py:smoke, run once for its own tests and for the weighted ensemble's Table 4.

  With an external test set: cq500/slices256 built from `cq500_fixture`, as seed 000 §2.1.3 tests on
  Qure.ai's set.
  """
  from configs import strong_vs_weak

  return run_smoke(strong_vs_weak, tiny_data_dir, tmp_path_factory.mktemp("svw"),
                   {"experiment.external": "cq500/slices256:test",
                    "experiment.external_manual_dir.cq500": str(cq500_fixture.root)})


@pytest.fixture(scope="package")
def cq500_fixture(tmp_path_factory):
  """A CQ500 download in qure.ai's layout (tests/data_builders/fixtures.py): three readers, scan-level labels."""
  from tests.data_builders import fixtures

  return fixtures.write_cq500(tmp_path_factory.mktemp("cq500") / "manual")


def run_smoke(config_module, data_dir: str, root, overrides=None):
  """An experiment config's smoke variant, run to the end on the session's tiny dataset; (config, workdir).

  `overrides`: dotted config fields set before it runs ("experiment.strong_vs_weak": ...).
  """
  from ich_jax import experiments
  from ich_jax.experiments import sweep

  config = sweep.override(config_module.get_config("smoke"), {"dataset.data_dir": data_dir, **(overrides or {})})
  experiments.run(config, root)
  return config, root
