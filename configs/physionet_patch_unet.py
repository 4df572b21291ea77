"""Seed 002: the PhysioNet CT-ICH threshold baseline, full-slice U-Net and patch U-Net, cross-validated.

  python launch.py --config configs/physionet_patch_unet.py --workdir runs/patch_unet         # phantoms
  python launch.py --config configs/physionet_patch_unet.py:physionet --workdir runs/physionet \\
      --config.dataset.manual_dir=/data/physionet-ct-ich                                      # the real data
  python launch.py --config configs/physionet_patch_unet.py:smoke --workdir /tmp/pu           # tests use it

Variants (colon-separated): `physionet` (physionet_ct_ich/slices at its native 512², the builder's subject
folds), `paper_patches` (160 × 160 windows at stride 80, the paper's numbers, instead of the public code's
128/64), `any_pixel` / `reference_area` (the slice rules below), `smoke` (synthetic_ich/tiny, CPU
minutes). Every cross-validation round (experiment.cv.folds) runs
three stages through the shared loop (ich_jax/experiments/runner.py; the stages:
ich_jax/experiments/physionet_patch_unet.py, the U-Nets' steps and overrides here in `experiment`) and
report.md pools their held-out predictions (`ich_jax.eval.segmentation_tables`: Tables 5 and 6, Dice per
subtype):
  threshold   the grid-search baseline (ich_jax.eval.threshold)
  full_unet   the U-Net on whole slices, blood-free slices undersampled to as many as the slices with blood
  patch_unet  the U-Net on windows, blood-free windows undersampled; stitched by sliding-window inference
Both U-Nets validate every `train.select_every` steps during training (about one PhysioNet epoch; seed
002 §6 validates after each epoch), keep the state of best validation Jaccard and close then open their maps.

Slice level (Tables 5 and 6). The paper does not say when a slice counts as positive; its public code
(main.py, both releases) calls a predicted slice positive when its post-processed mask has more than 20 × 20
= 400 pixels, a count of pixels anywhere on the slice, not a connected region (`detectionSen`,
`np.sum(mask) > detectionSen`). That is the default: task.slice_min_pixels = 401 on 512² slices, scaled by
area on others. The same code applies `> 400` to the reference mask; in the release behind the paper its
masks were 0/255 JPEGs, so a reference slice needed 2 blood pixels (255·n > 400), the default here
(eval.slice_reference_min_pixels = 2); the NIfTI release's 0/1 masks need 401, as the predictions
(`reference_area`). `any_pixel` calls a slice positive from one pixel on both sides (slice_min_pixels 1,
the slice labels as reference).

Chronic ICH. Seed 002 §3: "One of cases had a chronic ICH, and it was excluded from this study":
`physionet` sets dataset.exclude_chronic (the builder leaves that subject out; its own build folder).
The public code instead trains on it and leaves it out of the per-subject Jaccard and Dice only
(`class_report[21, :] = np.nan`); --config.dataset.exclude_chronic=False keeps it everywhere.

Window size. Seed 002 cuts 160² windows at stride 80 from 640² images (49 windows); its public code cuts
128² at stride 64 from the 512² NIfTI slices the dataset now ships (49 windows again), which is what
physionet_ct_ich reads, so 128/64 is the default on the real data and `paper_patches` gives 160/80. The
phantoms default to synthetic_ich/small, the quickstart's 128² build (the same heads at ~1.8 mm pixels):
a 160 window does not fit, and the windows keep the paper's geometry instead, a quarter of the slice at a
stride of an eighth (32/16, 49 windows). The morphology sizes scale with the slice the same way (10 and 5
pixels at 512², the public code's). small256 (256²) is the same heads at twice the pixels: set
--config.dataset.config=small256 --config.data.image_size=256 with windows 64/32, closing 5, opening 3.
"""
import math

from ml_collections import ConfigDict

from configs import segmentation
from configs.common import parse_arg


def _geometry(c, image_size: int, patch: int, stride: int) -> None:
  c.data.image_size = image_size
  c.data.patch.size = patch
  c.data.patch.stride = stride
  # Seed 002's public code: closing with a 10 × 10 square, then opening with 5 × 5 ("in order not to delete
  # thin hemorrhage"), on 512² slices; scaled to the slice size.
  c.task.closing = max(1, round(10 * image_size / 512))
  c.task.opening = max(1, round(5 * image_size / 512))
  c.task.slice_min_pixels = slice_min_pixels(image_size)


def slice_min_pixels(image_size: int) -> int:
  """Seed 002's public code: a slice is positive when its mask has more than 20 × 20 pixels (`detectionSen`)
  on the 512² NIfTI slices; the same area on `image_size`² slices of the same field of view."""
  return math.floor(400 * (image_size / 512) ** 2) + 1


def get_config(arg: str | None = None) -> ConfigDict:
  v = parse_arg(arg, config="configs/physionet_patch_unet.py", smoke=False, physionet=False, paper_patches=False,
                any_pixel=False, reference_area=False)
  # configs/segmentation.py's seed 002 U-Net: the brain window (level 40, width 120) as one grey channel
  # (§3), the 24-layer network at width 64 (§4), cross-entropy, Adam at 1e-5, batch 32 for windows (§6).
  c = segmentation.get_config("unet:smoke" if v.smoke else "unet")
  c.dataset.kind = "slices"
  c.dataset.manual_dir = ""
  # Set per round by the experiment (experiment.cv); these are what a single stage run would read.
  c.dataset.validation_split = "validation"
  # Seed 002 §6, "linear transformations" only: rotation ≤ 20°, width/height shift ≤ 0.1, shear 0.1 and
  # zoom 0.2 (Keras ImageDataGenerator ranges in the public code: shear in degrees), no flips ("all the
  # subjects entered the CT scanner with their heads facing to the same direction"). These are the
  # pipeline's defaults; set here so that they stay seed 002's.
  a = c.data.augment
  a.enabled, a.rotation_deg, a.shift_frac, a.shear_deg, a.scale_range = True, 20.0, 0.1, 0.1, (0.8, 1.2)
  a.hflip = a.vflip = False
  c.data.patch = ConfigDict()
  c.data.patch.negative_ratio = 1.0      # as many blood-free windows as windows with blood, per epoch
  c.data.patch.redraw_each_epoch = False
  c.task.patch = 0                       # whole slices; the patch stage links it to data.patch.size
  c.task.stride = 0
  # Set with the slice size (_geometry): the public code's "more than 20 × 20 pixels" (module docstring).
  c.eval.slice_reference_min_pixels = 2  # the paper-era code: a 0/255 reference mask summing over 400
  # Seed 002 trains 150 epochs (its public code 100); ~3,000 windows per PhysioNet epoch at batch 32.
  c.train.num_steps = 15000
  c.train.log_every = 100
  # Seed 002 §6: "The trained model was validated after each epoch"; its best is kept (evaluate.BestCheckpoint).
  # Regular checkpoints only resume a run.
  c.train.select_every = 100             # ~one epoch of ~3,000 windows at batch 32
  c.train.checkpoint_every = 1500
  c.train.keep_checkpoints = 2
  c.eval.batch_size = 16
  c.eval.baseline = False
  c.eval.figures = False

  e = c.experiment = ConfigDict()
  e.name = "physionet_patch_unet"
  e.only = ()                            # stage names or folder prefixes to run alone (runner.run_stages)
  # Seed 002 §6: "Subject-based, 5-fold cross-validation"; a dataset without stored folds is folded by study
  # over all of its splits (every phantom study is held out once over the five rounds).
  e.cv = ConfigDict({"num_folds": 5, "folds": (0, 1, 2, 3, 4), "pool": "train+validation+test"})
  # The U-Nets' steps, and overrides merged over the base (the threshold baseline is a host step of its own).
  e.stages = ConfigDict()
  e.stages.full_unet = ConfigDict({"steps": ("train", "select_checkpoint", "eval"),
                                   "overrides": {
      # Seed 002 §6: the full-slice U-Net with "random undersampling" of the slices without ICH, batch 2,
      # 150 epochs of ~640 slices.
      "data": {"sampling": {"mode": "balanced", "lesion": "any", "balance_subtypes": False}},
      "train": {"batch_size": 2, "num_steps": 50000, "checkpoint_every": 5000,
                "select_every": 320}}})     # ~one epoch of ~640 slices at batch 2
  e.stages.patch_unet = ConfigDict({"steps": ("train", "select_checkpoint", "eval"),
                                    "overrides": {"dataset": {"kind": "patches"},
                                                  "task": {"patch": 0, "stride": 0}}})

  if v.physionet:
    c.dataset.name = "physionet_ct_ich"
    c.dataset.config = "slices"
    c.dataset.exclude_chronic = True     # seed 002 §3 (module docstring)
    _geometry(c, 512, 128, 64)           # the public code's windows on the 512² NIfTI slices
  else:
    _geometry(c, 128, 32, 16)            # synthetic_ich/small: a quarter of the slice, stride an eighth
  if v.paper_patches:
    if c.data.image_size < 160:
      raise ValueError("configs/physionet_patch_unet.py:paper_patches needs slices of at least 160 pixels; "
                       "combine it with physionet (512²)")
    c.data.patch.size, c.data.patch.stride = 160, 80   # seed 002 §5: 160 × 160 windows, stride 80
  if v.smoke:
    c.data.read_threads = 2
    c.data.prefetch_batches = 2
    _geometry(c, 32, 16, 8)
    c.task.closing, c.task.opening = 3, 2  # scaled they would be 1 (none): keep the post-processing in the path
    c.train.num_steps = 2
    c.train.select_every = 1             # validate after every step; keep only the newest to resume
    c.train.checkpoint_every = 2
    c.train.keep_checkpoints = 1
    e.stages.full_unet.overrides.train = ConfigDict({"batch_size": 8, "num_steps": 2, "checkpoint_every": 2,
                                                     "select_every": 1})
    e.cv.folds = (0,)
  if v.any_pixel and v.reference_area:
    raise ValueError("configs/physionet_patch_unet.py: any_pixel and reference_area are two slice rules; give one")
  if v.any_pixel:
    c.task.slice_min_pixels, c.eval.slice_reference_min_pixels = 1, 0
  if v.reference_area:
    c.eval.slice_reference_min_pixels = c.task.slice_min_pixels
  # One window size for training (data) and stitching (task).
  e.stages.patch_unet.overrides.task.patch = c.data.patch.get_ref("size")
  e.stages.patch_unet.overrides.task.stride = c.data.patch.get_ref("stride")
  return c
