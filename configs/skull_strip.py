"""A small U-Net for skull stripping (seed 000 §2.1.4's alternative to the classical mask), through the shared loop.

  python launch.py --config configs/skull_strip.py --workdir runs/skull_strip
  python launch.py --config configs/skull_strip.py:smoke --workdir /tmp/ss          # tests use it

Seed 000 strips the skull with "a 3D U-net model developed in-house" that is not public. This trains
seed 002's 2D U-Net (narrow) to output the brain mask of a slice. Its target is the classical mask
(`ich_jax.data.skull_strip.brain_mask`, computed in the pipeline: `config.data.brain_mask = True`), not
the phantom's anatomy: synthetic_ich stores no brain masks, and the classical mask is what a real dataset
would give too. The U-Net learns to imitate it (evaluation reports Dice and Jaccard against it); its value
is speed on an accelerator and smoother masks, not better anatomy. The recipe channels' "skull_stripped"
op uses the classical mask.
"""
from ml_collections import ConfigDict

from configs import segmentation
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
  smoke = parse_arg(arg, config="configs/skull_strip.py", smoke=False).smoke
  c = segmentation.get_config("unet:smoke" if smoke else "unet")
  # What the classical method reads: soft tissue (brain window 40/80) and bone (500/3000, seed 000 §2.1.4).
  c.data.recipe = ((0, 40, 80), (0, 500, 3000))
  c.data.brain_mask = True
  c.task.target = "brain_mask"
  c.task.loss = "dice+bce"               # our choice: the mask is a large object (Dice) with sharp edges (BCE)
  c.optimizer.learning_rate = 1e-4       # our choice for a narrow network from scratch (seed 000 gives none)
  if not smoke:
    c.model.options = ConfigDict({"width": 16})
  c.eval.baseline = False
  return c
