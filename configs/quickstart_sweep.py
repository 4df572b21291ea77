"""Window and recipe ablation of the quickstart model: one run per channel recipe, one table.

  python launch.py --config configs/quickstart.py --sweep configs/quickstart_sweep.py --workdir runs/recipes
  python launch.py --config configs/quickstart.py:smoke --sweep configs/quickstart_sweep.py --workdir /tmp/recipes
  python launch.py --config configs/quickstart.py --sweep configs/quickstart_sweep.py:seeds --workdir runs/seeds

Each entry is a dict of dotted overrides of the base config (`name` names the
run's folder). Finished runs are skipped on a rerun; WORKDIR/sweep.md compares
them (DeLong against the first row). Argument `seeds`: the base recipe with
three seeds instead, the run-to-run spread the ablation's differences should
beat.
"""
from ich_jax.data import windows


def _recipe(recipe) -> list[list]:
  return [list(channel) for channel in recipe]


RECIPES = (
    # Seed 003 §2 (the paper): brain 40/80, subdural 80/200, bone 600/2800 on one slice.
    ("rsna_3window", windows.RSNA_3WINDOW),
    # Seed 003's public code: slices s-1, s, s+1 in the brain window.
    ("rsna_neighbours", windows.RSNA_NEIGHBOURS),
    # Seed 000 §2.1.4: stroke 40/40, brain 40/80, bone 500/3000 (without its skull-stripped fourth channel).
    ("seed000_3window", windows.SEED000_3WINDOW),
    # One brain window (40/80) in one channel: what the extra windows and neighbours add.
    ("brain_only", ((0, 40, 80),)),
)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg in (None, "", "recipes"):
    return [{"name": name, "data.recipe": _recipe(recipe)} for name, recipe in RECIPES]
  if arg == "seeds":
    return [{"name": f"seed{seed}", "seed": seed} for seed in (0, 1, 2)]
  raise ValueError(f"configs/quickstart_sweep.py: unknown argument {arg!r}; expected 'recipes' or 'seeds'")
