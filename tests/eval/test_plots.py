"""`ich_jax.eval.plots`: each figure is a PNG of the size asked for; the study overview puts each tile and its
overlay where its layout says (the figures in a report: tests/eval/test_report.py; in a prediction:
tests/test_predict.py)."""
import struct

import numpy as np
from PIL import Image

from ich_jax.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
  """(width, height) from the PNG's IHDR chunk."""
  data = path.read_bytes()
  assert data[:8] == PNG and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


def test_roc_figure_is_a_square_png_even_with_a_class_without_a_curve(tmp_path):
  fpr, tpr = np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.8, 1.0])
  nan = np.array([np.nan]), np.array([np.nan])
  path = plots.roc_figure({"any": (fpr, tpr), "epidural": nan}, tmp_path / "roc.png",
                          points={"any": (0.2, 0.8), "epidural": (np.nan, np.nan)},
                          dashed={"any": (fpr, tpr ** 2)}, aucs={"any": 0.9, "epidural": np.nan})
  assert path == tmp_path / "roc.png" and _png_size(path) == (600, 600)    # 6 × 6 in at 100 dpi


def test_volume_scatter_draws_zero_estimates_on_log_axes(tmp_path):
  pairs = {"U-Net": (np.array([0.005, 1.0, 30.0]), np.array([0.0, 1.2, 25.0])),
           "threshold": (np.array([0.005, 1.0, 30.0]), np.array([0.1, 2.0, 40.0]))}
  path = plots.volume_scatter(pairs, tmp_path / "volumes.png", stats=["r 0.99", "r 0.95"])
  assert _png_size(path) == (600, 600)
  assert _png_size(plots.volume_scatter({}, tmp_path / "empty.png")) == (600, 600)


def test_study_overview_lays_out_tiles_three_to_a_row(tmp_path):
  h, w, band, top = 40, 50, 34, 22          # tile, caption band and title rows (plots.study_overview)
  mask = np.zeros((h, w))
  mask[10:20, 30:40] = 1
  heat = np.zeros((h, w))
  heat[5:15, 5:15] = 2.0
  heat[30:35, 5:15] = 0.3                   # under a fifth of the maximum: not drawn
  tiles = [{"image": np.zeros((h, w)), "overlay": mask, "kind": "mask", "caption": "slice 3: blood"},
           {"image": np.full((h, w), 0.5), "overlay": heat, "kind": "heat", "caption": "slice 4"},
           {"image": np.ones((h, w)), "overlay": None, "caption": "slice 5"},
           {"image": np.full((h, w), 0.25), "caption": "slice 6"}]
  path = plots.study_overview(tiles, tmp_path / "overview.png", title="study", overlay_label="Grad-CAM")
  assert _png_size(path) == (3 * w, top + 2 * (h + band))
  rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)

  def tile(i):
    r, c = divmod(i, 3)
    y = top + r * (h + band) + band
    return rgb[y:y + h, c * w:(c + 1) * w]

  # The mask blends 45% red-orange into the black slice; elsewhere the slice is left as it is.
  np.testing.assert_allclose(tile(0)[15, 35], [115, 17, 0], atol=2)
  np.testing.assert_array_equal(tile(0)[30, 10], [0, 0, 0])
  # The heat map colours its hot square and leaves the faint one (and the rest) grey.
  assert np.ptp(tile(1)[10, 10]) > 50
  np.testing.assert_allclose(tile(1)[32, 10], [128, 128, 128], atol=2)
  np.testing.assert_allclose(tile(2)[20, 25], [255, 255, 255], atol=2)
  np.testing.assert_allclose(tile(3)[20, 25], [64, 64, 64], atol=2)
  # The sixth place of the second row stays empty (black).
  assert not rgb[top + h + band:, 2 * w:].any()
