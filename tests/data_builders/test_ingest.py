"""The builder base: shards by weight, the standard configs."""
import pytest

from data_builders import ingest


def test_partition_keeps_order_and_makes_several_shards():
  groups = ingest.partition([1.0] * 10, max_weight=100.0, min_parts=4)
  assert len(groups) == 4 and [i for g in groups for i in g] == list(range(10))
  assert ingest.partition([5.0, 5.0, 5.0], max_weight=6.0, min_parts=1) == [[0], [1], [2]]
  assert ingest.partition([], 1.0, 4) == []
  assert len(ingest.partition([1.0], 1.0, 4)) == 1


@pytest.mark.parametrize("level", ["slice", "scan"])
def test_standard_configs(level):
  from data_builders.rsna_ich import rsna_ich
  names = {c.name: (c.level, c.resolution) for c in rsna_ich.RsnaIch.BUILDER_CONFIGS}
  assert names[f"{level}s"] == (level, 512) and names[f"{level}s256"] == (level, 256)
