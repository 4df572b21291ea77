"""Seed 000's weight model (§2.2.3) on frozen base segmentation models: the ensemble through the shared trainer.

  # Base models, each trained and then exported once (its maps become data):
  python launch.py --config configs/segmentation.py:unet --workdir runs/seg_unet
  python launch.py --config configs/segmentation.py:unet --workdir runs/seg_unet --mode export_features
  python launch.py --config configs/segmentation.py:inception_unet --workdir runs/seg_inception_unet
  python launch.py --config configs/segmentation.py:inception_unet --workdir runs/seg_inception_unet \\
      --mode export_features
  # The weight model on their maps, evaluated on the combined map:
  python launch.py --config configs/ensemble.py --workdir runs/ensemble
  python launch.py --config configs/ensemble.py:smoke --workdir /tmp/w   # tests use it

The argument is colon-separated: `smoke` (tiny widths, 2 steps) and `image`
(the weight model also reads the image channels of `data.recipe` after the
maps, an option of ours; seed 000 feeds it the maps only). Point
`--config.dataset.exports="('W1', 'W2')"` at other base runs; with `image`, set
`--config.model.options.num_models` to their number too.

Seed 000's base models are five Inception U-Nets trained on subsets (all ICH,
subtype-pretrained encoder, SDH only, SAH only, small lesions);
configs/weighted_ensemble.py trains those. Here the bases are the two
segmentation models this repository trains. Their train-split maps are
in-sample: the weight model learns from maps better than the test split's
(seed 000 does not say which data trained the weight model).
"""
from ml_collections import ConfigDict

from configs.common import parse_arg
from ich_jax.data import config_defaults, windows


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, config="configs/ensemble.py", smoke=False, image=False)
  smoke, with_image = a.smoke, a.image
  c = ConfigDict()
  c.seed = 0

  c.dataset = ConfigDict()
  c.dataset.kind = "base_maps"
  # The slice dataset the base runs were exported from (images and reference masks come from it).
  c.dataset.name = "synthetic_ich"
  c.dataset.config = "small"
  c.dataset.data_dir = "data/tfds"
  c.dataset.manual_dir = ""             # a real dataset's download (docs/datasets.md)
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  # Workdirs of the base segmentation runs, each exported (--mode export_features) for both splits;
  # map n of an example is exports[n]'s.
  c.dataset.exports = ("runs/seg_unet", "runs/seg_inception_unet")

  c.data = config_defaults.default_data_config()
  c.data.image_size = 128               # the base models' input size (configs/segmentation.py): the maps' grid
  # Image channels, read with `image`: seed 000 §2.1.4's stroke, brain and bone windows.
  c.data.recipe = windows.SEED000_3WINDOW
  c.data.augment.enabled = False        # the maps are fixed outputs on unaugmented slices (ich_jax.data.base_maps)

  c.model = ConfigDict()
  c.model.name = "ensemble_weights"
  c.model.num_classes = 1               # unused: the output is one weight per base model
  c.model.options = ConfigDict()

  c.task = ConfigDict()
  c.task.name = "ensemble"
  c.task.with_image = with_image
  c.task.dice_over = "batch"            # as the base models' Dice (configs/segmentation.py)
  c.task.dice_ignore_empty = False      # normal slices count: the combined map must say "no blood" there
  c.task.threshold = 0.5                # seed 000 §2.2.3: pixel probability threshold 0.5

  c.optimizer = ConfigDict()
  # Seed 000 §2.2.2 trains the base models with Adam at 1e-4; it gives no
  # optimizer for the weight model, so it gets the same.
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0

  c.train = ConfigDict()
  c.train.batch_size = 32               # not in our copy of seed 000 (Supplementary Table S2); the base models'
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 2
  c.train.progress = True

  c.eval = ConfigDict()
  c.eval.batch_size = 64
  c.eval.threshold = 0.5
  c.eval.baseline = True                # the source gives the slice's HU image, as the slice pipeline's does

  if smoke:
    c.dataset.config = "tiny"
    # The test trains two segmentation smoke runs and points here at them.
    c.dataset.exports = ("/tmp/ich_smoke/seg_a", "/tmp/ich_smoke/seg_b")
    c.data.image_size = 32
    c.data.read_threads = 2
    c.data.prefetch_batches = 2
    c.model.options.widths = (4, 8)
    c.train.batch_size = 8
    c.train.num_steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.progress = False
    c.eval.batch_size = 16
    c.eval.n_boot = 50
    c.eval.figures = False
  if with_image:
    c.model.options.num_models = len(c.dataset.exports)  # the maps come first, then the image channels
  return c
