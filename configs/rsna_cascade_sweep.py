"""Recipe ablation of the whole seed 003 cascade: the paper's three windows against the public code's neighbours.

  python launch.py --config configs/rsna_cascade.py --sweep configs/rsna_cascade_sweep.py --workdir runs/cascade_recipes
  python launch.py --config configs/rsna_cascade.py:smoke --sweep configs/rsna_cascade_sweep.py --workdir /tmp/cr

Each entry runs the whole experiment in WORKDIR/<name>; WORKDIR/sweep.md
compares their ensembles (DeLong against the first row).
"""
from ich_jax.data import windows


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, ""):
    raise ValueError(f"configs/rsna_cascade_sweep.py takes no argument, got {arg!r}")
  return [
      # Seed 003 §2: brain 40/80, subdural 80/200, bone 600/2800 on one slice.
      {"name": "paper_3window", "cnn.data.recipe": [list(t) for t in windows.RSNA_3WINDOW]},
      # Seed 003's public code: slices s-1, s, s+1 in the brain window.
      {"name": "public_code_neighbours", "cnn.data.recipe": [list(t) for t in windows.RSNA_NEIGHBOURS]},
  ]
