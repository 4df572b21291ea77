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


def test_split_progress_opens_with_the_first_task_and_closes_with_the_last(capsys):
  progress = ingest.SplitProgress("rsna_ich/slices train", 2, "series")
  assert capsys.readouterr().err == ""          # planned, not started: TFDS plans every split first
  progress.start()
  progress.update()
  progress.update()
  err = capsys.readouterr().err
  assert "rsna_ich/slices train: 100%" in err and "2/2" in err and "series/s" in err
  ingest.SplitProgress("empty", 0).start()      # a split without tasks shows no bar
  assert capsys.readouterr().err == ""
