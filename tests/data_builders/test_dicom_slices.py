"""The builders' DICOM slices: order along the normal, foreign orientations, duplicates and gaps."""
import numpy as np

from data_builders import dicom_slices

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def header(sop, z, orientation=AXIAL, thickness=float("nan")):
  return dicom_slices.SliceHeader(path=f"/d/{sop}.dcm", sop_uid=sop, patient_id="P", study_uid="st",
                                  series_uid="se", position=(0.0, 0.0, z), orientation=orientation,
                                  pixel_spacing=(0.5, 0.5), rows=8, cols=8, slice_thickness=thickness,
                                  window=(40.0, 80.0))


def test_order_rejects_a_foreign_orientation_keeps_duplicates_and_notes_varying_gaps():
  coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
  slices = [header("c", 10.0), header("a", 0.0), header("x", 5.0, orientation=coronal), header("b", 5.0),
            header("a2", 0.0), header("d", 20.0)]
  o = dicom_slices.order_slices(slices)
  assert [s.sop_uid for s in o.slices] == ["a", "a2", "b", "c", "d"]
  np.testing.assert_allclose(o.z, [0, 0, 5, 10, 20])
  assert [p for p, _ in o.rejected] == ["/d/x.dcm"] and "differs from the series'" in o.rejected[0][1]
  notes = " | ".join(m for _, m in o.notes)
  assert "duplicate slice position z=0.000 mm" in notes and "varying slice gaps 5.000–10.000 mm" in notes
  assert o.gap == 5.0 and o.thickness == 5.0      # no SliceThickness: the gap stands in
  assert dicom_slices.order_slices([header("a", 0.0, thickness=2.0), header("b", 1.0, thickness=2.0)]).thickness == 2.0
