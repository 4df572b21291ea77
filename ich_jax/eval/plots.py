"""PNG figures: ROC curves with operating points, volume scatter (evaluation); the study overview (prediction).

matplotlib is imported inside the functions and drawn through the Agg canvas
directly (no pyplot, no global backend switch), so importing ich_jax.eval
costs nothing and figures can be made from any thread or headless host.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def _figure(size=(6.0, 6.0)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=size, dpi=100)
  FigureCanvasAgg(fig)
  return fig


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | pathlib.Path, *,
               points: Mapping[str, tuple[float, float]] | None = None,
               dashed: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
               aucs: Mapping[str, float] | None = None, title: str = "ROC",
               dashed_label: str = "compared") -> pathlib.Path:
  """One ROC curve per entry of `curves` ({name: (fpr, tpr)}).

  `points` marks each class's operating point (1 - specificity, sensitivity)
  at the report's threshold; `dashed` draws a second prediction set's curves
  in the same colours.
  """
  fig = _figure()
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls=":")
  colours = {}
  for name, (fpr, tpr) in curves.items():
    if np.isnan(fpr).any() or np.isnan(tpr).any():
      continue  # one class present: no curve to draw
    label = name if not aucs or np.isnan(aucs.get(name, np.nan)) else f"{name} (AUC {aucs[name]:.3f})"
    (line,) = ax.plot(fpr, tpr, lw=1.5, label=label, drawstyle="default")
    colours[name] = line.get_color()
    if points and name in points and not np.isnan(points[name]).any():
      ax.plot(*points[name], "o", color=colours[name], ms=6, mec="k", mew=0.6)
  for name, (fpr, tpr) in (dashed or {}).items():
    if name in colours:
      ax.plot(fpr, tpr, lw=1.0, ls="--", color=colours[name])
  if dashed:
    ax.plot([], [], ls="--", color="0.3", label=dashed_label)
  if points:
    ax.plot([], [], "o", color="0.5", mec="k", mew=0.6, label="operating point")
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title, aspect="equal")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path)
  return path


def volume_scatter(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | pathlib.Path, *,
                   title: str = "Volume agreement", reference_label: str = "reference volume (mL)",
                   stats: Sequence[str] | None = None) -> pathlib.Path:
  """Estimated vs reference volume, one marker set per {name: (reference, estimate)}, log–log.

  Log axes because bleeds span punctate (< 0.01 mL) to large (> 25 mL), seed
  001's bins; an estimate of 0 mL is drawn at the lower edge.
  """
  fig = _figure()
  ax = fig.add_subplot()
  values = np.concatenate([np.ravel(np.asarray(v, np.float64)) for pair in pairs.values() for v in pair] or [[1.0]])
  positive = values[values > 0]
  lo = positive.min() / 2 if positive.size else 0.01
  hi = positive.max() * 2 if positive.size else 1.0
  ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls=":", label="identity")
  for i, (name, (ref, est)) in enumerate(pairs.items()):
    label = name if not stats else f"{name} ({stats[i]})"
    ax.plot(np.maximum(np.asarray(ref, np.float64), lo), np.maximum(np.asarray(est, np.float64), lo), "o",
            ms=3.5, alpha=0.7, label=label)
  ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=reference_label,
         ylabel="estimated volume (mL)", title=title, aspect="equal")
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path)
  return path


BOX_COLOR = (1.0, 0.9, 0.0)   # a detector's boxes: yellow, apart from the red mask and the jet heat map


def outline(rgb: np.ndarray, box, color) -> np.ndarray:
  """Draws box (y1, x1, y2, x2, pixel edges) as a 1-pixel outline on the pixels it covers, in place, clipped
  to the image; returns `rgb` [h, w, 3]."""
  h, w = rgb.shape[:2]
  top, left = int(np.clip(np.floor(box[0]), 0, h - 1)), int(np.clip(np.floor(box[1]), 0, w - 1))
  bottom, right = int(np.clip(np.ceil(box[2]) - 1, 0, h - 1)), int(np.clip(np.ceil(box[3]) - 1, 0, w - 1))
  color = np.asarray(color, rgb.dtype)
  rgb[[top, bottom], left:right + 1] = color
  rgb[top:bottom + 1, [left, right]] = color
  return rgb


# A heat overlay is drawn where it reaches this value (on the one [0, 1] scale every tile shares).
HEAT_FLOOR = 0.2


def study_overview(tiles: Sequence[Mapping], path: str | pathlib.Path, *, title: str = "",
                   overlay_label: str = "") -> pathlib.Path:
  """A montage of slices, each {"image": [h, w] in [0, 1] (brain window), "overlay": [h, w] or None,
  "kind": "heat" (a saliency map in [0, 1], already scaled by the caller: predict scales each slice's
  Grad-CAM by the slice's probability) or "mask" (non-zero = blood), "caption": str, and
  optionally "boxes": [{"box": (y1, x1, y2, x2) in the tile's pixel edges, "label": str}] (a detector's,
  outlined with the label above)}.

  At most three per row, every tile the first one's size. The overlay is blended where it is non-zero
  (heat: at or above `HEAT_FLOOR`, coloured by its value on one scale for every tile), so the anatomy stays
  readable under it. The montage is composed as
  one RGB array and drawn unscaled with its captions (no axes, no layout pass): a fraction of the time a
  grid of matplotlib axes takes, which matters when a study's report should cost less than its model.
  """
  from matplotlib import colormaps

  n = max(1, len(tiles))
  cols = min(3, n)
  rows = -(-n // cols)
  h, w = np.asarray(tiles[0]["image"]).shape if tiles else (64, 64)
  band = 34                                    # caption rows above each tile (two lines of 8-pt text)
  top = 22 if (title or overlay_label) else 0
  canvas = np.zeros((top + rows * (h + band), cols * w, 3), np.float32)
  jet = colormaps["jet"]
  for i, tile in enumerate(tiles):
    r, c = divmod(i, cols)
    rgb = np.repeat(np.clip(np.asarray(tile["image"], np.float32), 0, 1)[..., None], 3, axis=-1)
    overlay = tile.get("overlay")
    if overlay is not None:
      overlay = np.asarray(overlay, np.float32)
      if tile.get("kind") == "mask":
        where, color, alpha = overlay > 0, np.array([1.0, 0.15, 0.0], np.float32), 0.45
      else:
        heat = np.clip(overlay, 0.0, 1.0)
        where, color, alpha = heat >= HEAT_FLOOR, jet(heat)[..., :3].astype(np.float32), 0.4
      rgb = np.where(where[..., None], (1 - alpha) * rgb + alpha * color, rgb)
    for b in tile.get("boxes") or ():
      outline(rgb, b["box"], BOX_COLOR)
    y = top + r * (h + band) + band
    canvas[y:y + h, c * w:(c + 1) * w] = rgb
  fig = _figure((canvas.shape[1] / 100, canvas.shape[0] / 100))
  fig.figimage(canvas, 0, 0, origin="upper")
  height = canvas.shape[0]
  for i, tile in enumerate(tiles):
    r, c = divmod(i, cols)
    fig.text((c * w + w / 2) / canvas.shape[1], 1 - (top + r * (h + band) + 3) / height, tile.get("caption", ""),
             ha="center", va="top", fontsize=8, color="white")
    for b in tile.get("boxes") or ():
      y1, x1 = max(b["box"][0], 0.0), max(b["box"][1], 0.0)
      fig.text((c * w + x1) / canvas.shape[1], 1 - (top + r * (h + band) + band + y1 - 1) / height, b["label"],
               ha="left", va="bottom", fontsize=7, color=BOX_COLOR)
  if title or overlay_label:
    fig.text(0.5, 1 - 4 / height, " · ".join(t for t in (title, overlay_label) if t), ha="center", va="top",
             fontsize=9, color="white")
  path = pathlib.Path(path)
  # Low zlib effort: the encoder's time drops severalfold for a somewhat larger file.
  fig.savefig(path, dpi=100, facecolor="black", pil_kwargs={"compress_level": 1})
  return path
