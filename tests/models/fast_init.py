"""Models with random weights drawn by numpy: no XLA compilation per weight shape.

Eager construction compiles one random-number kernel per distinct weight shape;
on our 2-core CPUs that is 5–25 s for a small U-Net, longer than the test that
uses it. `materialize` traces the constructor abstractly (the real `__init__`
code, shapes and structure) and fills the weights with He-scaled normals.
`noise` > 0 also randomises biases, BatchNorm scales and running statistics,
so a test can tell a zero bias from a missing one (a GRU with zero biases
keeps a zero state on zero input, which hides padding bugs).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def materialize(ctor, seed: int = 0, noise: float = 0.0) -> nnx.Module:
  graphdef, state = nnx.split(nnx.eval_shape(ctor))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key(seed)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    z = rng.standard_normal(x.shape)
    if len(x.shape) >= 2:  # kernels
      return (z * np.sqrt(2.0 / np.prod(x.shape[:-1]))).astype(x.dtype)
    name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
    if name in ("scale", "var"):
      return (1.0 + noise * np.abs(z)).astype(x.dtype)
    return (noise * z).astype(x.dtype)

  return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


def finite(tree) -> bool:
  return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))
