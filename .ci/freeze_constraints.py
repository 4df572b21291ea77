"""Writes constraints.txt: the exact versions of requirements.txt and everything they pull in, as installed here.

  python .ci/freeze_constraints.py            # after `python -m pip install -r requirements.txt` on CI's machine

Only the dependency closure of requirements.txt is pinned (what else the
environment holds is not), so `pip install -r requirements.txt -c
constraints.txt` reproduces the tested set. packaging (pip's own) reads the
requirement markers.
"""
from __future__ import annotations

import pathlib
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def top_level(path: pathlib.Path) -> list[Requirement]:
  lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
  return [Requirement(line) for line in lines if line]


def closure(roots: list[Requirement]) -> dict[str, str]:
  """{canonical name: installed version} of `roots` and, recursively, their requirements that apply here."""
  env = default_environment()
  found: dict[str, str] = {}
  todo = [(r, frozenset(r.extras)) for r in roots]
  while todo:
    req, extras = todo.pop()
    name = canonicalize_name(req.name)
    try:
      dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
      sys.exit(f"{req.name} is not installed: install requirements.txt first")
    new = name not in found
    found[name] = dist.version
    for spec in dist.requires or ():
      sub = Requirement(spec)
      if sub.marker is not None and not any(sub.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
        continue
      if new or extras:
        todo.append((sub, frozenset(sub.extras)))
  return found


def main() -> None:
  pins = closure(top_level(ROOT / "requirements.txt"))
  body = "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))
  (ROOT / "constraints.txt").write_text(
      "# The exact versions CI tested (Python 3.11, CPU): pip install -r requirements.txt -c constraints.txt\n"
      "# Written by .ci/freeze_constraints.py from the installed closure of requirements.txt.\n" + body)
  print(f"constraints.txt: {len(pins)} packages")


if __name__ == "__main__":
  main()
