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
  heat[5:15, 5:15] = 0.9
  heat[30:35, 5:15] = 0.15                  # under HEAT_FLOOR (0.2): not drawn
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
  # One scale for every tile: the same map at a tenth of the values (a slice of probability 0.1 in predict)
  # stays under the floor, not normalised back to its own maximum.
  tiles[1]["overlay"] = heat / 10
  faint = np.asarray(Image.open(plots.study_overview(tiles, tmp_path / "faint.png")).convert("RGB")).astype(int)
  np.testing.assert_allclose(faint[band:band + h, w:2 * w][10, 10], [128, 128, 128], atol=2)
  np.testing.assert_allclose(tile(2)[20, 25], [255, 255, 255], atol=2)
  np.testing.assert_allclose(tile(3)[20, 25], [64, 64, 64], atol=2)
  # The sixth place of the second row stays empty (black).
  assert not rgb[top + h + band:, 2 * w:].any()


def test_detector_boxes_are_outlined_on_their_tile(tmp_path):
  rgb = np.zeros((8, 10, 3), np.float32)
  plots.outline(rgb, (2.0, 1.5, 5.0, 4.0), (1.0, 1.0, 0.0))
  # Pixel edges 2..5 × 1.5..4: rows 2–4, columns 1–3 (every pixel the box touches), one pixel wide.
  drawn = rgb[..., 0] > 0
  expected = np.zeros((8, 10), bool)
  expected[[2, 4], 1:4] = expected[2:5, [1, 3]] = True
  np.testing.assert_array_equal(drawn, expected)
  assert (rgb[drawn] == [1, 1, 0]).all() and not rgb[~drawn].any()
  plots.outline(rgb, (-3.0, 6.0, 20.0, 30.0), (0.0, 0.0, 1.0))   # past the edge: clipped to the last pixels
  assert rgb[0, 6:, 2].all() and rgb[7, 6:, 2].all() and rgb[:, 9, 2].all() and rgb[:, 6, 2].all()

  h, w, band, top = 40, 50, 34, 22
  tiles = [{"image": np.zeros((h, w)), "overlay": None, "caption": "slice 0",
            "boxes": [{"box": (10.0, 5.0, 20.0, 25.0), "label": "EDH/SDH 0.91"}]},
           {"image": np.zeros((h, w)), "overlay": None, "caption": "slice 1", "boxes": []}]
  path = plots.study_overview(tiles, tmp_path / "overview.png", title="study")
  got = np.asarray(Image.open(path).convert("RGB")).astype(int)
  first = got[top + band:top + band + h, :w]
  np.testing.assert_allclose(first[10, 5:25], np.tile([255, 230, 0], (20, 1)), atol=2)   # BOX_COLOR
  np.testing.assert_allclose(first[15, 24], [255, 230, 0], atol=2)
  np.testing.assert_array_equal(first[15, 10:20], np.zeros((10, 3)))     # the inside is left as it was
  # No boxes, nothing drawn (below the rows the first tile's label may run into).
  assert not got[top + band + 12:top + band + h, w:2 * w].any()
