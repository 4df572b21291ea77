"""`config.data` for slice inputs: every key a config may set, with its default and where the number comes from.

`ich_jax.data.slice_plan` reads it (and fills keys an older config lacks from
here); the slice, patch and base-map pipelines take it as `cfg`.
"""
from __future__ import annotations

import ml_collections

from ich_jax.data import windows


def default_data_config() -> ml_collections.ConfigDict:
  """`config.data`: what a slice becomes before it reaches a model."""
  c = ml_collections.ConfigDict()
  # Output in-plane size; records of another size are resized (bilinear image,
  # nearest mask). 512 is the native RSNA matrix, also seed 001's input size.
  c.image_size = 512
  # (slice_offset, level, width) per channel; see ich_jax.data.windows for the
  # named recipes and their papers. Default: seed 003 §2 brain/subdural/bone.
  c.recipe = windows.RSNA_3WINDOW
  # "window": each channel apply_window(level, width) -> [0, 1].
  # "clip_rescale": each channel clip_rescale(clip_range -> clip_out_range);
  # level/width ignored, only the offsets are used (seed 001).
  # "dicom_window": each channel's slice in its own DICOM header window (the
  # record's `dicom_window`; rsna_ich stores it), min-max scaled: seed 003's
  # public code; level/width only stand in for a slice without a header window.
  c.intensity = "window"
  c.clip_range = (-240.0, 240.0)      # seed 001, Image Preprocessing
  c.clip_out_range = (-3.0, 3.0)      # seed 001, Image Preprocessing
  # True: each example also carries `brain_mask` (uint8 [H, W]), the slice's classical skull-stripping
  # mask (ich_jax.data.skull_strip), the target of a skull-stripping U-Net (configs/skull_strip.py).
  c.brain_mask = False
  # > 0: each example also carries its centre slice's hemorrhage instances (boxes, subtypes, an
  # instance map; at most this many, ich_jax.data.instances), the targets of seed 001's detector.
  c.instances = 0
  # Loading: grain thread prefetch per process, and optional worker processes.
  c.read_threads = 8                   # threads, each building a whole batch
  c.prefetch_batches = 8               # batches buffered ahead (memory: B*H*W*C*4 bytes each)
  c.num_workers = 0                    # >0: grain mp_prefetch worker processes
  # Where the training slices are windowed, warped and resized. "device": the
  # batches carry the int16 HU slices (`hu`) and each example's affine map
  # (`warp`) instead of `image`, and the jitted train step does the rest
  # (ich_jax.data.on_device): the host only reads, so a few host cores feed an
  # accelerator. "host": grain does it all (numpy). "auto": "device" unless
  # JAX's backend is the CPU, where XLA's gathers are slower than the numpy
  # warp (docs/PERFORMANCE.md, Input pipeline). Evaluation batches are built on
  # the host either way, and so are inputs that need skull stripping.
  c.preprocess_on = "auto"
  c.augment = ml_collections.ConfigDict()
  a = c.augment
  a.enabled = True
  # Magnitudes from seed 002 (Methods, augmentation list; Keras-style ranges):
  # rotation <= 20 deg, width/height shift 0.1, zoom 0.2, shear 0.1 (Keras
  # reads shear in degrees, so 0.1 deg is effectively no shear).
  a.rotation_deg = 20.0
  a.shift_frac = 0.1                   # max shift per axis, fraction of the image size
  a.scale_range = (0.8, 1.2)           # isotropic; > 1 magnifies
  a.shear_deg = 0.1
  # Off by default: seed 002 forbids flips (all heads face the same way).
  # Seed 003 (§2) flips; its configs set hflip = True.
  a.hflip = False
  a.vflip = False
  # Training slices that show blood in a study with at most `small_bleed_ml` mL
  # appear `small_bleed_repeat` times per epoch (1 = plain epochs). Seed 000
  # (§2.2.1, Model 5) gives small lesions (<= 5 mL) a model of their own because
  # they are rare and hard; this is the single-model form of that emphasis.
  # Needs the dataset's `study_blood_ml` (datasets with masks).
  c.small_bleed_repeat = 1
  c.small_bleed_ml = 5.0
  # Which training slices make up an epoch (`EpochSampler`). "all": every
  # record once (small_bleed_repeat aside). "balanced" (seed 000 §2.1 and
  # §2.2.1): as many normal slices (no blood) as lesion slices, the lesion
  # slices optionally balanced over subtypes ("the same number of slices as
  # those of IPH, IVH, SDH, EDH, and SAH"); slices with blood that is not the
  # chosen lesion kind are left out. "balanced_scans" (seed 000 §2.2.1): as
  # many normal scans (no blood) as scans with the lesion, every slice of each;
  # num_lesion counts scans, subtypes are not balanced, drawn once.
  c.sampling = ml_collections.ConfigDict()
  s = c.sampling
  s.mode = "all"
  # Lesion slices: "any" blood, one subtype ("subdural", seed 000 Model 3), or
  # "small": blood in a study of at most small_bleed_ml mL (seed 000 Model 5).
  s.lesion = "any"
  s.balance_subtypes = True
  s.num_lesion = 0                     # lesion slices per epoch; 0 = as many as the split has
  # Seed 000 draws its balanced set once; True draws a fresh one every epoch
  # (more of the normal slices seen over a run).
  s.redraw_each_epoch = False
  return c
