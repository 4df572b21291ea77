"""Hemorrhage instances from a slice's label map: components per subtype, boxes on pixel edges, fixed shapes."""
import numpy as np
import pytest

from ich_jax import LABELS
from ich_jax.data import instances

IPH, SDH = LABELS.index("intraparenchymal"), LABELS.index("subdural")


def _mask():
  m = np.zeros((12, 10), np.uint8)
  m[1:4, 2:6] = IPH          # 12 px
  m[7, 7] = IPH              # 1 px, a second IPH bleed
  m[4:6, 6:8] = SDH          # 4 px, touches the first IPH diagonally: a different subtype, its own instance
  m[9:11, 0] = SDH           # 2 px
  m[10, 1] = SDH             # 8-connected to the previous: one instance of 3 px
  return m


def test_one_instance_per_component_of_each_subtype_largest_first():
  out = instances.from_mask(_mask(), 6)
  assert int(out["gt_count"]) == 4
  np.testing.assert_array_equal(out["gt_subtypes"], [IPH, SDH, SDH, IPH, 0, 0])
  np.testing.assert_array_equal(out["gt_boxes"][:4], [[1, 2, 4, 6], [4, 6, 6, 8], [9, 0, 11, 2], [7, 7, 8, 8]])
  np.testing.assert_array_equal(out["gt_boxes"][4:], 0)
  imap = out["instance_map"]
  assert imap.dtype == np.uint8 and imap.shape == (12, 10)
  for g, n in enumerate([12, 4, 3, 1], start=1):
    assert (imap == g).sum() == n
  # Every blood pixel belongs to the instance of its own subtype.
  np.testing.assert_array_equal((imap > 0), _mask() > 0)


def test_truncation_keeps_the_largest_and_empty_slices_have_none():
  out = instances.from_mask(_mask(), 2)
  assert int(out["gt_count"]) == 2 and out["gt_boxes"].shape == (2, 4)
  assert set(np.unique(out["instance_map"])) == {0, 1, 2}
  empty = instances.from_mask(np.zeros((5, 5), np.uint8), 3)
  assert int(empty["gt_count"]) == 0 and not empty["instance_map"].any() and not empty["gt_boxes"].any()


def test_bad_shapes_and_counts_are_refused():
  with pytest.raises(ValueError, match=r"shape \(2, 5, 5\)"):
    instances.from_mask(np.zeros((2, 5, 5)), 3)
  with pytest.raises(ValueError, match="data.instances=300"):
    instances.from_mask(np.zeros((5, 5)), 300)
  with pytest.raises(ValueError, match="needs a dataset with hemorrhage masks"):
    instances.add_to_example({"image": np.zeros((4, 4, 1))}, 3)
  assert instances.add_to_example({"image": 1}, 0) == {"image": 1}
