"""External test sets: another builder's split, named in a config as "name[/config]:split".

Seed 003 scores its RSNA-trained cascade on PhysioNet CT-ICH and CQ500
(Table 4); seed 000 tests on an external set too. An experiment's
`experiment.external` lists such sets, e.g.

  --config.experiment.external="cq500:test,physionet_ct_ich:fold0+fold1+fold2+fold3+fold4"

and every model of the experiment exports its predictions on each of them
(`export/<key>/`), read through that dataset's own builder: its own series
choice, geometry and HU (`ich_jax.data.dicom`), with the run's own
preprocessing on top (window recipe, resize), as on its training data.

A set without "/config" uses the training dataset's builder config (slices256
with slices256; with rsna_ich's slices256_stage1 the set's slices256), so one
resolution serves all. The real datasets' downloads
are `experiment.external_manual_dir.<name>`. Labels are harmonised by the
builders: CQ500's are the majority of three readers per scan, carried by every
slice (`scan_level`: slice-level statistics do not exist there);
PhysioNet's are its per-slice diagnosis CSV; RSNA's its per-image CSV.
"""
from __future__ import annotations

import dataclasses
import re
import sys

import ml_collections
import numpy as np

from ich_jax.data import datasets

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(/(?P<config>[A-Za-z0-9_]+))?:(?P<split>[A-Za-z0-9_+\[\]%:.=!/-]+)$")


@dataclasses.dataclass(frozen=True)
class ExternalSet:
  name: str           # the builder (cq500, physionet_ct_ich, rsna_ich, synthetic_ich)
  config: str         # its builder config (slices256, ...)
  split: str          # a split of it ("test", "fold0+fold1+...")
  manual_dir: str     # the download the builder reads (real datasets)

  @property
  def key(self) -> str:
    """The set's folder name under a run's export/ and an experiment's external/: "cq500.test"."""
    return f"{self.name}.{self.split}"

  @property
  def label(self) -> str:
    """How tables name the set: "cq500/slices256:test"."""
    return f"{self.name}/{self.config}:{self.split}"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def parse(entries, dataset_config, manual_dirs=None) -> list[ExternalSet]:
  """`experiment.external` (a comma-separated string or a sequence of "name[/config]:split") → sets.

  Errors name the entry and what is wrong: the syntax, an unknown dataset, or a set named twice.
  """
  if isinstance(entries, str):
    entries = [e for e in (s.strip() for s in entries.split(",")) if e]
  manual_dirs = dict(manual_dirs or {})
  out, seen = [], set()
  for entry in entries or ():
    m = _SPEC.match(str(entry).strip())
    if m is None:
      raise ValueError(f"config experiment.external entry {entry!r}: expected name[/config]:split, e.g. "
                       "'cq500:test' or 'physionet_ct_ich/slices256:fold0+fold1'")
    name = m["name"]
    if name not in datasets.BUILDERS:
      raise KeyError(f"config experiment.external entry {entry!r}: dataset {name!r} is not known; known: "
                     f"{', '.join(sorted(datasets.BUILDERS))}")
    known = [c.name for c in getattr(datasets.builder_class(name), "BUILDER_CONFIGS", ())]
    s = ExternalSet(name=name, config=m["config"] or _same_kind(str(dataset_config.config), known),
                    split=m["split"], manual_dir=str(manual_dirs.get(name) or ""))
    if known and s.config not in known:
      raise ValueError(f"config experiment.external entry {entry!r}: {name} has no builder config {s.config!r} "
                       f"(the training dataset's, when none is named); name one: {', '.join(known)}, e.g. "
                       f"'{name}/{known[-1]}:{s.split}'")
    if s.key in seen:
      raise ValueError(f"config experiment.external names {s.key!r} twice")
    seen.add(s.key)
    out.append(s)
  return out


def _same_kind(config: str, known) -> str:
  """The external builder's config of the training config's kind: the same name, else the longest of its
  names that begins it (rsna_ich's slices256_stage1 → slices256), else the name as given (refused below)."""
  if config in known:
    return config
  prefixes = [k for k in known if config.startswith(k)]
  return max(prefixes, key=len) if prefixes else config


def from_dicts(entries) -> list[ExternalSet]:
  """Sets from their `as_dict` form (how stage configs carry them)."""
  return [ExternalSet(**{k: str(e[k]) for k in ("name", "config", "split", "manual_dir")}) for e in entries or ()]


def dataset_config(base, s: ExternalSet) -> ml_collections.ConfigDict:
  """The run's dataset config pointed at `s` (same data_dir): what `datasets.open_split` reads it with."""
  c = ml_collections.ConfigDict(base.to_dict()) if hasattr(base, "to_dict") else ml_collections.ConfigDict(base)
  with c.unlocked():
    c.name, c.config, c.manual_dir, c.eval_split = s.name, s.config, s.manual_dir, s.split
  return c


def scan_level(name: str) -> bool:
  """True when the dataset labels scans, not slices (its builder module's SCAN_LEVEL_LABELS: CQ500)."""
  return bool(getattr(sys.modules[datasets.builder_class(name).__module__], "SCAN_LEVEL_LABELS", False))


def reader_labels(base, s: ExternalSet) -> np.ndarray | None:
  """[scans, readers, 6] of a set whose builder keeps several readers' labels (CQ500's `reader_labels`), in
  study order of first appearance; None for a set with one reference."""
  b = datasets.builder(dataset_config(base, s))
  if "reader_labels" not in b.info.features:
    return None
  fields = datasets.read_fields(datasets.metadata_source(b, s.split), ("study_id", "reader_labels"))
  _, first = np.unique(np.asarray(fields["study_id"]).astype(str), return_index=True)
  return np.asarray(fields["reader_labels"])[np.sort(first)]


def has_feature(base, s: ExternalSet, name: str) -> bool:
  """Whether the set's builder writes feature `name` (read from its schema; nothing is built)."""
  return name in datasets.builder(dataset_config(base, s)).info.features
