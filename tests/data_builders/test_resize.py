"""Build-time resizing: pad to square, block mean or linear, masks stay 'any'."""
import numpy as np

from data_builders import resize
from ich_jax.data import resample


def test_fit_pads_non_square_and_resizes_any_factor():
  img = np.arange(48 * 64, dtype=np.float32).reshape(48, 64)
  fit = resize.Fit(img.shape, 32)
  out = fit.image(img)
  assert out.shape == (32, 32) and out.dtype == np.int16
  assert fit.offset == (8, 0) and fit.scale == 0.5
  assert (out[:4] == resize.AIR_HU).all()                      # padding is air
  padded = np.full((64, 64), resize.AIR_HU, np.float32)
  padded[8:56] = img
  np.testing.assert_array_equal(out, np.rint(resample.area_downsample(padded, 32)).astype(np.int16))
  np.testing.assert_allclose(fit.spacing((0.4, 0.5)), [0.8, 1.0])
  assert fit.point(0, 0) == (4.0, 0.0)
  # Not an integer factor, and upsampling: linear; masks stay "any".
  mask = np.zeros((48, 48), bool)
  mask[10, 20] = True
  assert resize.Fit(mask.shape, 32).mask(mask).sum() >= 1
  assert resize.Fit((16, 16), 32).image(np.full((16, 16), 40.0)).tolist() == np.full((32, 32), 40).tolist()
