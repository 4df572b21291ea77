"""ich_jax.data.dicom.geometry: tag numbers, the slice normal, order along it; strict raises, tolerant records."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ich_jax.data.dicom import geometry
from ich_jax.data.dicom.files import DicomError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_first_value_of_a_multi_valued_tag_and_nan_when_absent_or_not_a_number():
  assert geometry.first_value(pydicom.multival.MultiValue(str, ["40", "80"])) == 40.0
  assert np.isnan(geometry.first_value(None)) and np.isnan(geometry.first_value("abc"))
  assert np.isnan(geometry.first_value([])) and geometry.first_value("2.5") == 2.5


@pytest.mark.parametrize("value, error", [
    (None, "f.dcm: missing required tag ImagePositionPatient"),
    (["1", "x", "3"], r"f.dcm: ImagePositionPatient is not numeric: \['1', 'x', '3'\]"),
    (["1", "2"], r"f.dcm: ImagePositionPatient needs 3 finite numbers, got \['1', '2'\]"),
    (["1", "nan", "3"], "f.dcm: ImagePositionPatient needs 3 finite numbers"),
])
def test_tag_floats_strict_names_file_tag_and_value_tolerant_gives_none(value, error):
  header = {} if value is None else {"ImagePositionPatient": value}   # any mapping with .get, as read
  with pytest.raises(DicomError, match=error):
    geometry.tag_floats(header, "ImagePositionPatient", 3, where="f.dcm")
  assert geometry.tag_floats(header, "ImagePositionPatient", 3, strict=False) is None
  ds = Dataset()
  ds.ImagePositionPatient = ["1", "2", "3.5"]
  np.testing.assert_array_equal(geometry.tag_floats(ds, "ImagePositionPatient", 3, strict=False), [1, 2, 3.5])


def test_slice_normal_is_cross_of_row_and_column_strict_raises_on_a_degenerate_orientation():
  np.testing.assert_allclose(geometry.slice_normal(AXIAL), [0, 0, 1])
  np.testing.assert_allclose(geometry.slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])   # sagittal
  parallel = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
  assert geometry.slice_normal(parallel) is None and geometry.slice_normal((1, 0, 0)) is None
  with pytest.raises(DicomError, match=r"f.dcm: ImageOrientationPatient \[1.0, 0.0, 0.0, 1.0, 0.0, 0.0\] has parallel"):
    geometry.slice_normal(parallel, strict=True, where="f.dcm")
  with pytest.raises(DicomError, match="f.dcm: ImageOrientationPatient needs 6 values"):
    geometry.slice_normal((1, 0, 0), strict=True, where="f.dcm")


def test_order_along_a_tilted_normal_keeps_duplicates_when_tolerant_and_names_them_when_strict():
  tilt = np.deg2rad(20.0)
  orientation = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt))
  normal = geometry.slice_normal(orientation)
  # Positions step along the table (z), not the normal: the projection gives 5 cos(20°) apart.
  z_table = np.array([10.0, 0.0, 5.0, 5.0, 15.0])
  positions = np.stack([np.zeros(5), np.zeros(5), z_table], axis=1)
  order = geometry.order_along_normal(positions, normal, tiebreak=["d", "a", "c", "b", "e"])
  assert order.index == [1, 3, 2, 0, 4]                 # the tie at 5 mm by the tie-break: b before c
  np.testing.assert_allclose(order.z, np.sort(z_table) * np.cos(tilt))
  np.testing.assert_array_equal(order.positions, positions[order.index])
  assert order.duplicates == [1]
  np.testing.assert_allclose(order.gaps, [5 * np.cos(tilt)] * 3)
  assert order.gap == pytest.approx(5 * np.cos(tilt))
  assert geometry.order_along_normal(positions, normal).index == [1, 2, 3, 0, 4]   # no tie-break: input order
  with pytest.raises(DicomError, match=r"duplicate slice position z=4.6985 mm .* in s2 and s3"):
    geometry.order_along_normal(positions, normal, strict=True, names=[f"s{i}" for i in range(5)])
  one = geometry.order_along_normal(positions[:1], normal, strict=True, names=["s0"])
  assert one.index == [0] and one.duplicates == [] and np.isnan(one.gap)


def test_orientation_key_rounds_to_four_decimals():
  assert geometry.orientation_key((1.0, 0.00001, 0.0, 0.0, 0.99999, 0.0)) == AXIAL
