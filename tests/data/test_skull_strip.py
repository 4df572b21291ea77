"""Skull stripping: the classical brain mask against the phantom's known anatomy and on a real head CT slice,
and the skull-stripped brain window as a recipe channel (seed 000 §2.1.4)."""
import numpy as np
import pydicom
import pydicom.data
import pytest

from ich_jax.data import config_defaults, dicom, phantom, pipeline, resample, skull_strip, slice_inputs, slice_plan
from ich_jax.data import windows
from ich_jax.eval import metrics as M


@pytest.fixture(scope="module")
def head():
  # A whole head (skull base to vertex) at 256 × 1 mm with a large subdural: extra-axial blood must stay in.
  spec = phantom.PhantomSpec(matrix=256, pixel_spacing_mm=(0.9, 1.0), slice_thickness_mm=(5.0,), max_slices=40,
                             p_hemorrhage=1.0, p_extra_bleed=0.0, subtype_probs=(0, 0, 0, 0, 1.0),
                             size_bin_probs=(0, 0, 0, 1.0))
  return phantom.make_phantom(3, spec)


def _intracranial_slices(ic):
  """Slices the phantom's anatomy defines well: at least 60% of the largest intracranial area (not the
  skull base, where its soft tissue under the fossae has brain density, nor the vertex's tangential cut)."""
  area = ic.sum(axis=(1, 2))
  return np.flatnonzero(area >= 0.6 * area.max())


def test_brain_mask_matches_the_phantoms_intracranial_space(head):
  masks = np.stack([skull_strip.brain_mask(s, head.pixel_spacing_mm) for s in head.hu])
  good = _intracranial_slices(head.intracranial)
  assert len(good) >= 10
  dice = M.dice(masks[good], head.intracranial[good], axis=(1, 2))
  assert dice.mean() >= 0.95 and dice.min() >= 0.85, dice
  # The subdural crescent lies against the inner table: stripping keeps it (where it shows as blood; the
  # phantom's mask also covers voxels whose partial volume with the inner table reads as bone).
  blood = head.masks.any(axis=0) & (head.hu < skull_strip.DENSE_HU)
  assert blood.sum() > 5000 and (masks & blood).sum() / blood.sum() >= 0.98
  # Nothing of the scalp or skull: no pixel of the mask is bone-dense or outside the head's outer table.
  assert (head.hu[masks] >= skull_strip.BONE_HU).mean() < 0.002
  assert not (masks & (head.hu < -200)).any()


def test_brain_mask_at_the_stored_resolutions(head):
  # The pipeline strips the stored slice: 128 (synthetic_ich/small's size) from the same head.
  hu = resample.area_downsample(head.hu, 128)
  ic = head.intracranial.reshape(len(hu), 128, 2, 128, 2).mean(axis=(2, 4)) >= 0.5
  good = _intracranial_slices(ic)
  spacing = np.asarray(head.pixel_spacing_mm) * 2
  dice = M.dice(np.stack([skull_strip.brain_mask(hu[k], spacing) for k in good]), ic[good], axis=(1, 2))
  assert dice.mean() >= 0.93, dice


def test_brain_mask_on_a_real_head_ct_slice(tmp_path):
  # pydicom's J2K_pixelrep_mismatch.dcm: an axial head CT through the posterior fossa, temporal lobes and
  # frontal sinuses (0.431 mm pixels) - a skull-base slice, the hard case for a threshold method.
  ds = pydicom.dcmread(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
  hu = dicom.to_hu(ds)
  mask = skull_strip.brain_mask(hu, ds.PixelSpacing)
  # For checking by eye: the brain window with the mask's outline, and the stripped channel.
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(1, 2, figsize=(10, 5))
  ax[0].imshow(windows.apply_window(hu, 40, 80), cmap="gray")
  ax[0].contour(mask, colors="r", linewidths=0.7)
  ax[1].imshow(skull_strip.strip(windows.apply_window(hu, 40, 80), hu, ds.PixelSpacing), cmap="gray")
  fig.savefig(tmp_path / "skull_strip_real_ct.png", dpi=60)
  plt.close(fig)
  assert (tmp_path / "skull_strip_real_ct.png").stat().st_size > 10_000

  # Cerebellum, both temporal lobes and the gyrus rectus between the orbits are brain ...
  for row, col in ((340, 256), (220, 150), (220, 360), (120, 255)):
    assert mask[row, col], (row, col)
  # ... air (frontal sinuses, mastoid cells, outside the head), the scalp and the skull are not.
  assert not mask[hu < -200].any()
  assert not mask[470, 256] and hu[470, 256] > -100       # scalp behind the occiput
  assert (hu[mask] >= skull_strip.BONE_HU).mean() < 0.002
  assert 0.15 < mask.mean() < 0.25


def test_a_slice_without_skull_has_no_brain_and_bad_input_is_named():
  assert not skull_strip.brain_mask(np.full((32, 32), 30.0), (1.0, 1.0)).any()
  with pytest.raises(ValueError, match="one slice"):
    skull_strip.brain_mask(np.zeros((2, 32, 32)))
  with pytest.raises(ValueError, match="pixel_spacing"):
    skull_strip.brain_mask(np.zeros((32, 32)), (0.0, 1.0))


def test_skull_stripped_brain_window_is_a_recipe_channel(head):
  k = int(_intracranial_slices(head.intracranial)[0])
  hu = head.hu[k]
  image = windows.apply_recipe({0: hu}, windows.SEED000_4WINDOW, head.pixel_spacing_mm)
  assert image.shape == hu.shape + (4,)
  np.testing.assert_array_equal(image[..., 0], windows.apply_window(hu, 40, 40))    # stroke
  np.testing.assert_array_equal(image[..., 2], windows.apply_window(hu, 500, 3000))  # bone
  mask = skull_strip.brain_mask(hu, head.pixel_spacing_mm)
  np.testing.assert_array_equal(image[..., 3], np.where(mask, image[..., 1], 0))     # stripped brain window
  assert image[..., 1][~mask].max() == 1.0 and image[..., 3][~mask].max() == 0.0     # the skull was in channel 1
  # Under clip_rescale the outside takes the range's floor (air), not 0.
  rescaled = windows.apply_recipe_clip_rescale({0: hu}, [(0, 0, 480, "skull_stripped")], pixel_spacing=(0.9, 0.9))
  assert rescaled[..., 0][~skull_strip.brain_mask(hu, (0.9, 0.9))].max() == -3.0

  # Through the slice pipeline, from config data (lists, as JSON configs hold them).
  cfg = config_defaults.default_data_config()
  cfg.recipe = [list(t) for t in windows.SEED000_4WINDOW]
  cfg.image_size = 256
  record = {"image": hu, "mask": np.zeros_like(hu, np.uint8), "labels": np.zeros(6, np.float32),
            "series_id": b"s", "slice_index": np.int32(0), "pixel_spacing": np.float32(head.pixel_spacing_mm)}
  example = slice_inputs.preprocess(slice_inputs.read_example([record], 0, (0,)), cfg)
  np.testing.assert_array_equal(example["image"], image)
  assert slice_plan.num_channels(cfg) == 4
  # Training batches (HostBatch: channels written straight into the batch, then resized) are the evaluation
  # preprocessing's, bit for bit: the stripped channel and the brain_mask target, at another image size too.
  cfg.image_size, cfg.brain_mask, cfg.augment.enabled = 128, True, False
  cfg.read_threads, cfg.prefetch_batches = 1, 1
  want = slice_inputs.preprocess(slice_inputs.read_example([record], 0, (0,)), cfg)
  batch = next(pipeline.train_iterator([record], cfg, global_batch_size=2, seed=0))
  np.testing.assert_array_equal(batch["image"][0], want["image"])
  np.testing.assert_array_equal(batch["brain_mask"][0], want["brain_mask"])
  np.testing.assert_array_equal(want["brain_mask"], resample.resize_mask(mask.astype(np.uint8), 128))
  assert "brain" not in batch and want["image"][..., 3].max() > 0
  # Skull stripping is host work: "auto" keeps it on the host whatever the backend, "device" is refused.
  assert not slice_plan.from_config(cfg).on_device
  cfg.preprocess_on = "device"
  with pytest.raises(ValueError, match="skull stripping .* runs on the host"):
    slice_plan.from_config(cfg)
  cfg.preprocess_on, cfg.recipe = "auto", [[1, 40, 80]]
  with pytest.raises(ValueError, match="brain_mask=True needs the slice itself"):
    slice_plan.from_config(cfg)
  cfg.recipe = [[0, 40, 80, "skull_strip"]]
  with pytest.raises(ValueError, match="unknown channel op 'skull_strip'"):
    slice_inputs.preprocess(slice_inputs.read_example([record], 0, (0,)), cfg)


def test_skull_stripping_unet_trains_on_the_classical_masks(tiny_data_dir, tmp_path):
  import jax

  from configs import skull_strip as ss_config
  from ich_jax.train import evaluate, loop

  cfg = ss_config.get_config("smoke")
  cfg.dataset.data_dir = tiny_data_dir
  cfg.dataset.eval_split = "validation"               # 24 slices: the test is about the path, not the score
  cfg.train.num_steps = cfg.train.checkpoint_every = 1
  # The pipeline's target is the classical mask of the (augmented) slice, resized with it.
  source = pipeline.open_split(cfg.dataset, "validation")
  example = slice_inputs.load(source, slice_plan.from_config(cfg.data), 3)
  full = slice_inputs.read_example(source, 3, (0,))
  want = resample.resize_mask(skull_strip.brain_mask(full["image"], full["pixel_spacing"]).astype(np.uint8), 32)
  np.testing.assert_array_equal(example["brain_mask"], want)
  assert want.any()
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")   # faster eager init; the generator is not under test
  try:
    exp, state = loop.train(cfg, tmp_path)
    metrics = evaluate.evaluate(cfg, tmp_path, exp=exp, state=state, step=cfg.train.num_steps)
  finally:
    jax.config.update("jax_default_prng_impl", old)
  # Scored against the brain masks (not hemorrhage): every test slice with a brain counts.
  n_brain = sum(int(slice_inputs.load(source, slice_plan.from_config(cfg.data), i)["brain_mask"].any())
                for i in range(len(source)))
  assert metrics["reference"] == "brain_mask" and metrics["n_slices"] == n_brain > 0
  assert 0 <= metrics["dice"]["mean"] <= 1 and "Predicted masks against `brain_mask`" in (tmp_path / "report.md").read_text()
