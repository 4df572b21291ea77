"""Intensity "dicom_window" (seed 003's public code: each slice in its own header window, min-max scaled) on every
path a slice takes: evaluation, host and on-device training batches, a study read for prediction."""

import jax
import nibabel as nib
import numpy as np
import pydicom
import pytest

from ich_jax.data import dicom, phantom, pipeline, series_index, slice_inputs, slice_plan, study, windows
from tests.data.slice_fakes import data_cfg, fake_source, take

# Per series k: a header window (centre, width) unlike 40/80; series 2 has none (nan): the recipe's 40/80 stands in.
WINDOWS = {0: (30.0, 60.0), 1: (50.5, 151.0), 2: (np.nan, np.nan), 3: (600.0, 2800.0), 4: (-600.0, 1500.0)}


def _windowed_source(size=32):
  src = fake_source(size=size)
  ramp = np.linspace(-1000, 1500, size * size).reshape(size, size)
  for r in src:
    k, s = int(r["series_id"].decode().rsplit(".", 1)[1]), int(r["slice_index"])
    # HU -1000..1500 across the slice (shifted per slice), so every window has pixels inside it.
    r["image"] = (ramp + 10 * k + 3 * s).astype(np.int16)
    # Slice s of a series moves the centre by s HU: neighbours carry windows of their own.
    c, w = WINDOWS.get(k, (40.0, 80.0))
    r["dicom_window"] = np.asarray((c + s, w), np.float32)
  return src


def _by_hand(hu, window):
  """prepare_data.py: int() of centre and width, clip to [c - w // 2, c + w // 2], then (x - min) / (max - min)."""
  c, w = (40, 80) if np.isnan(window).any() else (int(window[0]), int(window[1]))
  x = np.clip(np.asarray(hu, np.float64), c - w // 2, c + w // 2)
  return (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)


def set_header_windows(paths, headers) -> None:
  """Rewrites WindowCenter / WindowWidth of each file (a multi-valued tag as a list); None deletes both."""
  for path, window in zip(paths, headers):
    ds = pydicom.dcmread(path)
    if window is None:
      del ds.WindowCenter, ds.WindowWidth
    else:
      ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(path)


def _cfg(image_size=32, **kw):
  return data_cfg(image_size=image_size, recipe=windows.RSNA_NEIGHBOURS, intensity="dicom_window", **kw)


def test_evaluation_inputs_are_each_neighbours_own_header_window_min_max_scaled():
  src = _windowed_source()
  b = next(iter(pipeline.eval_batches(src, _cfg(augment=False), batch_size=len(src))))
  index = series_index.SeriesSource(src)
  for i in range(len(src)):
    series, s = b["series_id"][i], int(b["slice_index"][i])
    for c, offset in enumerate((-1, 0, 1)):
      j = index.neighbours(series, s, (offset,))[offset]
      want = _by_hand(src[j]["image"], src[j]["dicom_window"])
      np.testing.assert_allclose(b["image"][i, ..., c], want, atol=2e-6, err_msg=f"{series} {s} {offset}")
      if int(series.decode()[-1]) in (0, 1, 3, 4):   # other header windows: another input than the fixed 40/80
        assert not np.allclose(b["image"][i, ..., c], windows.apply_window(src[j]["image"], 40, 80), atol=1e-2)


@pytest.mark.parametrize("augment", [False, True])
def test_training_batches_host_and_on_device_agree_with_evaluation(augment):
  src = _windowed_source()
  cfg = _cfg(augment=augment)
  cfg.augment.rotation_deg = 30.0
  host = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=4), 2)
  cfg.preprocess_on = "device"
  device = take(pipeline.train_iterator(src, cfg, global_batch_size=8, seed=4), 2)
  from ich_jax.data import on_device

  finish = on_device.TrainFinish(cfg)
  for h, d in zip(host, device):
    assert "hu_window" not in h and d["hu_window"].shape == (8, 3, 2)
    out = jax.jit(finish)({k: d[k] for k in finish.host_keys(("image", "labels"))})
    # float32 vs float64 warp coordinates move HU by ~0.02 (test_on_device); min-max keeps that small.
    np.testing.assert_allclose(np.asarray(out["image"]), h["image"], atol=1e-3 if augment else 1e-6)
    if not augment:
      plan = slice_plan.from_config(cfg)
      want = np.stack([slice_inputs.load(series_index.SeriesSource(src), plan, int(k))["image"]
                       for k in h["record_index"]])
      np.testing.assert_array_equal(h["image"], want)


def test_records_without_header_windows_are_refused_before_any_batch():
  with pytest.raises(ValueError, match=r"intensity='dicom_window'.*record 0 \(series 1\.2\.3\.\d, slice \d\) has "
                                       r"none.*Set data.intensity='window'"):
    pipeline.eval_batches(fake_source(), _cfg(augment=False), batch_size=4)


def test_a_dicom_study_carries_each_slices_header_window_and_a_nifti_study_is_refused(tmp_path):
  p = phantom.make_phantom(0, phantom.PhantomSpec(matrix=64, pixel_spacing_mm=(3.5, 3.5), slice_thickness_mm=(5.0,),
                                                  max_slices=4, p_hemorrhage=1.0))
  paths = dicom.write_series(p.hu, (5.0, 3.5, 3.5), tmp_path / "s", z_positions=p.z_positions_mm,
                             rescale_intercept=-1024.0, pixel_representation=0)
  set_header_windows(paths, [("30", "60"), (["45", "40"], ["150", "80"]), None, ("600", "2800")])
  s = study.read_study(tmp_path / "s")
  records = s.records()
  want = [(30, 60), (45, 150), (np.nan, np.nan), (600, 2800)]
  np.testing.assert_array_equal(np.stack([r["dicom_window"] for r in records]), np.asarray(want, np.float32))
  plan = slice_plan.from_config(_cfg(image_size=64, augment=False))
  image = slice_inputs.load(series_index.SeriesSource(records), plan, 1)["image"]   # what a bundle predicts on
  for c, j in enumerate((0, 1, 2)):
    np.testing.assert_allclose(image[..., c], _by_hand(s.hu[j], np.asarray(want[j])), atol=2e-6)

  nib.save(nib.Nifti1Image(np.transpose(s.hu, (2, 1, 0)).astype(np.int16), np.diag([-3.5, -3.5, 5.0, 1.0])),
           tmp_path / "s.nii.gz")
  nifti = study.read_study(tmp_path / "s.nii.gz").records()
  with pytest.raises(ValueError, match="a NIfTI study, does not"):
    slice_inputs.load(series_index.SeriesSource(nifti), plan, 0)
