"""`config.data`'s defaults."""

from ich_jax.data import config_defaults, slice_plan, windows


def test_default_config_fields():
  assert slice_plan.num_channels(config_defaults.default_data_config()) == 3
  c = config_defaults.default_data_config()
  assert c.intensity == "window" and [tuple(t) for t in c.recipe] == list(windows.RSNA_3WINDOW)
  assert set(c.augment) == {"enabled", "rotation_deg", "shift_frac", "scale_range", "shear_deg", "hflip", "vflip"}
  assert c.augment.hflip is False and c.augment.vflip is False  # seed 002: no flips
