"""ich-jax: intracranial hemorrhage detection, subtyping, segmentation and volume on head CT."""

import numpy as np

# The package version (pyproject.toml reads it from here).
__version__ = "0.1.0"

# Label order used everywhere (dataset features, model outputs, metrics, reports).
# "any" first, then the five subtypes alphabetically, as in the RSNA 2019 challenge
# CSV and the seed 003 paper (§2, the 6-digit label vector).
LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
SUBTYPES = LABELS[1:]
# The radiologists' abbreviations, for tables, reports and the detector's class names ("EDH/SDH").
SHORT = {"any": "ICH", "epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
         "subarachnoid": "SAH", "subdural": "SDH"}

# Seed 001 paper (hybrid 3D/2D Mask R-CNN), size bins of hemorrhage volume in mL:
# punctate < 0.01, small 0.01–5, medium 5–25, large > 25. Edges: a bin holds its
# lower edge (0.01 is small, 5 is medium) except that 25 is still medium, since
# the paper calls large "> 25".
SIZE_BINS = ("punctate", "small", "medium", "large")


def size_bin(volume_ml) -> np.ndarray | str:
  """Seed 001's bins: "punctate", "small", "medium", "large"; "none" for 0 mL."""
  v = np.asarray(volume_ml, dtype=np.float64)
  out = np.full(v.shape, "none", dtype=object)
  out[(v > 0) & (v < 0.01)] = "punctate"
  out[(v >= 0.01) & (v < 5)] = "small"
  out[(v >= 5) & (v <= 25)] = "medium"
  out[v > 25] = "large"
  return out.item() if out.ndim == 0 else out
