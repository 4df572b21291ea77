"""Series selection over headers: axial, non-contrast, soft tissue, preferred thickness, and the reasons."""
import numpy as np
import pytest
from pydicom.dataset import Dataset

from ich_jax.data import dicom
from ich_jax.data import series_selection as S

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Readable names ("5mm", "bone") stand in for SeriesInstanceUIDs here.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def series(uid, desc, n=20, thickness=5.0, kernel="STANDARD", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
           orientation=AXIAL, contrast=None, number=1, window=("40", "80"), tag_thickness=True):
  """The headers of one series: pydicom Datasets, as read from files."""
  o = np.asarray(orientation, float)
  normal = np.cross(o[:3], o[3:])
  out = []
  for i in range(n):
    ds = Dataset()
    ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = uid, desc, number
    ds.ImageType, ds.ConvolutionKernel = list(image_type), kernel
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in normal * thickness * i]
    if tag_thickness:
      ds.SliceThickness = str(thickness)
    ds.WindowCenter, ds.WindowWidth = window
    if contrast is not None:
      ds.ContrastBolusAgent = contrast
    out.append(ds)
  return out


def study(*series_headers):
  """SeriesInstanceUID -> headers, as select_series takes them."""
  return S.group_headers(h for hs in series_headers for h in hs)


def cq500_like():
  return study(
      series("thin", "CT PLAIN THIN", n=200, thickness=0.625, number=2),
      series("5mm", "CT 5mm", number=3),
      series("bone", "CT BONE", kernel="BONE", number=4),
      series("post", "CT POST CONTRAST", contrast="OMNIPAQUE", number=5),
      series("coronal", "CT Brain Coronal", orientation=(1, 0, 0, 0, 0, -1), number=6),
      series("scout", "Topogram 0.6 T20s", n=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), number=1),
      series("mip", "CT MIP", image_type=("DERIVED", "SECONDARY", "MIP"), number=7))


def test_picks_the_axial_plain_soft_series_at_the_preferred_thickness_and_says_why():
  sel = S.select_series(cq500_like())
  assert sel.series_uid == "5mm"
  assert sel.reason.startswith("chose 'CT 5mm' [5mm, 20 slices, 5 mm]: axial, non-contrast, soft tissue")
  assert "thickness closest to the preferred 5 mm" in sel.reason and "'CT PLAIN THIN'" in sel.reason
  why = {c.info.series_uid: " ".join(c.reasons) for c in sel.candidates if not c.accepted}
  assert set(why) == {"bone", "post", "coronal", "scout", "mip"}
  assert why["bone"] == "sharp kernel 'BONE'"
  assert why["post"] == "contrast: ContrastBolusAgent 'OMNIPAQUE'"
  assert why["coronal"].startswith("not axial: slice normal 90 deg from the z axis (coronal-like)")
  assert "is a localizer" in why["scout"] and "1 slices < min_slices 5" in why["scout"]
  assert "is a projection (MIP)" in why["mip"]
  assert [c.info.series_uid for c in sel.candidates[:2]] == ["5mm", "thin"]   # accepted first, in rank order
  assert S.select_series(cq500_like(), S.SelectionPolicy(preferred_thickness_mm=0.625)).series_uid == "thin"
  assert sel.to_dict()["candidates"][0]["thickness_mm"] == 5.0


def test_gantry_tilt_is_axial_a_steep_oblique_is_not():
  def tilted(deg):
    t = np.radians(deg)
    return series(f"t{deg}", "CT HEAD", orientation=(1, 0, 0, 0, np.cos(t), np.sin(t)))
  sel = S.select_series(study(tilted(20)))
  assert sel.series_uid == "t20" and "axial (tilt 20.0 deg)" in sel.reason
  sel = S.select_series(study(tilted(40)))
  assert sel.series_uid is None and "not axial: slice normal 40 deg" in sel.reason


@pytest.mark.parametrize("kernel, sharp", [
    ("STANDARD", False), ("SOFT", False), ("BONE", True), ("BONEPLUS", True), ("LUNG", True), ("DETAIL", True),
    ("H31s", False), ("H40s", False), ("J40s", False), ("Hr38", False), ("H70h", True), ("Br64", True),
    ("FC21", False), ("UB", False), ("Q7", None), ("", None)])
def test_kernel_names(kernel, sharp):
  assert S.kernel_is_sharp(kernel) is sharp


@pytest.mark.parametrize("desc, contrast", [
    ("CT PRE CONTRAST 5MM STD", False), ("CT 5 MM PRE CONTRAST", False), ("CT Thin Plain", False),
    ("CT 5mm", False), ("CT 55mm Plain", False), ("NON CONTRAST HEAD", False), ("CT 1.25 MMC", False),
    ("CT POST CONTRAST", True), ("CT 5mm POST CONTRAST", True), ("CT 4cc sec 150cc D3D on", True),
    ("CT C THIN", True), ("CT CECT THIN", True), ("CT ORAL IV", True), ("CTA HEAD", True)])
def test_contrast_words_in_descriptions(desc, contrast):
  (info,) = [S.summarize("x", series("x", desc))]
  assert (S.contrast_reason(info) is not None) is contrast


def test_contrast_agent_tag_none_means_plain():
  assert S.contrast_reason(S.summarize("x", series("x", "CT HEAD", contrast="NONE"))) is None


def test_unknown_kernel_falls_back_to_the_display_window():
  bone_window = series("bw", "CT HEAD", kernel="Q7", window=("600\\40", "2800\\80"))   # first value wins
  brain_window = series("sw", "CT HEAD", kernel="Q7", window=(["40", "600"], ["80", "2800"]))
  assert S.select_series(study(bone_window)).series_uid is None
  assert "WindowWidth 2800 is a bone window" in S.select_series(study(bone_window)).reason
  assert S.select_series(study(brain_window)).series_uid == "sw"


def test_original_before_derived_then_thickness_then_slices_then_series_number():
  derived_5 = series("d5", "CT HEAD 5mm", image_type=("DERIVED", "SECONDARY", "AXIAL"), number=2)
  original_2 = series("o2", "CT HEAD 2mm", thickness=2.0, number=3)
  assert S.select_series(study(derived_5, original_2)).series_uid == "o2"
  sel = S.select_series(study(derived_5))
  assert sel.series_uid == "d5" and "no ORIGINAL series passed" in sel.reason
  # Same thickness: more slices, then the lower SeriesNumber, then the UID.
  assert S.select_series(study(series("few", "CT", n=10), series("many", "CT", n=30))).series_uid == "many"
  assert S.select_series(study(series("n9", "CT", number=9), series("n4", "CT", number=4))).series_uid == "n4"
  assert S.select_series(study(series("zz", "CT"), series("aa", "CT"))).series_uid == "aa"


def test_thickness_from_positions_when_the_tag_is_missing():
  info = S.summarize("x", list(reversed(series("x", "CT", thickness=2.5, tag_thickness=False))))
  assert info.thickness_mm == pytest.approx(2.5)


def test_select_in_folder_with_a_mixed_folder_and_a_bad_file(tmp_path):
  vol = np.zeros((6, 8, 8))
  dicom.write_series(vol, (5.0, 0.5, 0.5), tmp_path / "a", series_uid="1.2.3.1", series_description="CT HEAD 5mm")
  dicom.write_series(vol, (5.0, 0.5, 0.5), tmp_path / "b", series_uid="1.2.3.2", series_description="CT HEAD BONE",
                     kernel="BONE")
  dicom.write_series(vol, (5.0, 0.5, 0.5), tmp_path / "a", series_uid="1.2.3.3", series_description="CT HEAD C+",
                     file_names=lambda i, uid: f"c{i}.dcm")    # same folder as "a": grouping is by UID
  (tmp_path / "a" / "broken.dcm").write_bytes(b"not dicom at all")
  (tmp_path / "notes.txt").write_text("ignored")
  sel, files, unreadable = S.select_in_folder(tmp_path)
  assert sel.series_uid == "1.2.3.1" and len(files) == 6 and all(f.parent.name == "a" for f in files)
  assert [(p.name, why) for p, why in unreadable] == [
      ("broken.dcm", "not a DICOM file (no 'DICM' preamble and no DICOM tag at byte 0)")]
  assert "sharp kernel 'BONE'" in sel.reason and "names contrast ('C+')" in sel.reason


def test_a_modality_other_than_ct_is_rejected_and_a_missing_tag_is_not():
  mr, ct, untagged = series("mr", "T2 AXIAL", number=1), series("ct", "CT 5mm", number=2), series("old", "CT", number=3)
  for ds in mr:
    ds.Modality = "MR"
  for ds in ct:
    ds.Modality = "CT"
  sel = S.select_series(study(mr, ct, untagged))
  why = {c.info.series_uid: c.reasons for c in sel.candidates}
  assert why["mr"] == ("Modality MR is not CT",)
  assert {c.info.series_uid for c in sel.candidates if c.accepted} == {"ct", "old"}
  assert S.select_series(study(mr)).series_uid is None
