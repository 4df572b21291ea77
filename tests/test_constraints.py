"""constraints.txt, the tested set of versions: every requirement pinned once, within requirements.txt's bounds."""
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lines(name: str) -> list[str]:
  return [s for s in (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines()) if s]


def test_every_requirement_is_pinned_once_within_its_bounds():
  pins: dict[str, Version] = {}
  for line in _lines("constraints.txt"):
    name, sep, version = line.partition("==")
    assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
    key = canonicalize_name(name)
    assert key not in pins, f"constraints.txt pins {name} twice"
    pins[key] = Version(version)
  for line in _lines("requirements.txt"):
    req = Requirement(line)
    key = canonicalize_name(req.name)
    assert key in pins, f"constraints.txt does not pin {req.name} (rerun .ci/freeze_constraints.py)"
    assert req.specifier.contains(pins[key], prereleases=True), \
        f"constraints.txt pins {req.name}=={pins[key]}, outside requirements.txt's {req.specifier}"
  # The closure, not only the top level: jax's own jaxlib, flax's and orbax's dependencies.
  assert {"jaxlib", "absl-py", "protobuf"} <= set(pins)
