"""The package's layers, read from the imports themselves (ast; imports inside functions count too).

Lowest first: domain constants and file-safety helpers (`ich_jax`, `ich_jax.atomic`, `ich_jax.lock`, ...)
→ `data` and `models` (and the dataset builders beside `data`), neither importing the other → `eval` →
`train` → `experiments` → `bundle`, `predict` → `launch.py`. An import may go down, or sideways within a
layer; never up, and never round a circle.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (prefix, layer): the longest matching prefix decides.
LAYERS = (
    ("ich_jax", 0),
    ("ich_jax.data", 1), ("data_builders", 1), ("ich_jax.models", 1),
    ("ich_jax.eval", 2),
    ("ich_jax.train", 3),
    ("ich_jax.experiments", 4),
    ("ich_jax.bundle", 5), ("ich_jax.predict", 5), ("ich_jax.pacs", 5),
    ("launch", 6),
)
# Layer 1 holds two sides that must not import each other (STYLE.md: models know nothing of datasets).
SIDES = {"ich_jax.data": "data", "data_builders": "data", "ich_jax.models": "models"}


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """Every module of ich_jax, data_builders and launch.py by dotted name (packages by their name)."""
  found = {"launch": root / "launch.py"}
  for top in ("ich_jax", "data_builders"):
    for path in sorted((root / top).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  """The project modules `name` imports (at any depth in the file: function-level imports count too)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import mod` imports the module pkg.mod; `from mod import NAME` imports mod.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for t in targets:
      # The deepest project module the target names (ich_jax.data.pipeline.load → ich_jax.data.pipeline).
      while t and t not in known:
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
  found = modules(root)
  return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
  best = max((p for p, _ in LAYERS if name == p or name.startswith(p + ".")), key=len)
  return dict(LAYERS)[best]


def side(name: str) -> str | None:
  best = [p for p in SIDES if name == p or name.startswith(p + ".")]
  return SIDES[max(best, key=len)] if best else None


def upward_imports(g: dict[str, set[str]]) -> list[str]:
  bad = []
  for a, targets in sorted(g.items()):
    for b in sorted(targets):
      if layer(b) > layer(a):
        bad.append(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})")
      elif layer(a) == layer(b) == 1 and side(a) != side(b):
        bad.append(f"{a} ({side(a)}) imports {b} ({side(b)}): data and models are independent")
  return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted; one module importing
  itself is not counted."""
  index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(g.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return sorted(out)


def test_no_import_cycles():
  found = cycles(graph())
  assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_reaches_up_a_layer_or_across_data_and_models():
  bad = upward_imports(graph())
  assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_checks_see_a_cycle_and_an_upward_import_added_to_a_copy(tmp_path):
  """The two checks on a copy of the tree with a deliberate cycle (data.windows ↔ data.augment) and an
  upward import (models.unet → train.loop, inside a function): both are reported, naming the modules."""
  import shutil

  for top in ("ich_jax", "data_builders"):
    shutil.copytree(ROOT / top, tmp_path / top)
  shutil.copy(ROOT / "launch.py", tmp_path / "launch.py")
  windows = tmp_path / "ich_jax" / "data" / "windows.py"
  windows.write_text(windows.read_text() + "\n\ndef _added():\n  from ich_jax.data import augment\n")
  augment = tmp_path / "ich_jax" / "data" / "augment.py"
  augment.write_text(augment.read_text() + "\n\ndef _added():\n  from ich_jax.data import windows\n")
  unet = tmp_path / "ich_jax" / "models" / "unet.py"
  unet.write_text(unet.read_text() + "\n\ndef _added():\n  from ich_jax.train import loop\n")
  g = graph(tmp_path)
  assert any({"ich_jax.data.windows", "ich_jax.data.augment"} <= set(c) for c in cycles(g))
  assert "ich_jax.models.unet (layer 1) imports ich_jax.train.loop (layer 3)" in upward_imports(g)


@pytest.mark.parametrize("case, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycles_finds_strongly_connected_groups(case, expected):
  assert cycles(case) == expected
