"""DICOM objects a PACS shows, made from a prediction: the blood mask as a DICOM Segmentation, the findings as a
Secondary Capture image.

  seg.dcm          a Segmentation (highdicom, BINARY) of the predicted mask, one segment per label of the
                   mask's label space with its SNOMED CT concept (`label_space`), each frame referencing the
                   source instance (or, for an enhanced multi-frame CT, the source frame) at its z index, so a
                   viewer (OHIF, 3D Slicer) overlays it on the study. Only when the bundle segments (a
                   segmentation or detector member) and the input is DICOM.
  overview_sc.dcm  a Secondary Capture of the findings: a text panel (per class probability, threshold, decision,
                   the disclaimer) above overview.png, in the source study (patient and study modules copied,
                   a new series); the same text in ImageComments. Every DICOM input.

A Secondary Capture rather than a Structured Report: every PACS viewer displays an image, while SR display
differs from viewer to viewer (many show only a tag dump, some nothing), and the findings are meant to be
read first, beside the study. The numbers stay machine-readable in report.json and in ImageComments.

What was written (file, UIDs) or why not goes into report.json's "dicom_outputs"; a failure here is recorded
there, never lost with the other outputs.
"""
from __future__ import annotations

import dataclasses
import pathlib
import textwrap
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ich_jax import LABELS, SHORT, atomic, provenance

SEG_FILE = "seg.dcm"
SC_FILE = "overview_sc.dcm"
# Series numbers of the derived series: high, so a viewer's series list shows them after the scanner's.
SEG_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
MANUFACTURER = "ich-jax"
PANEL_WIDTH = 640             # pixels: the findings' lines (about 70 characters) fit without wrapping

# SNOMED CT concepts (scheme "SCT"). Verified, where the source is named:
#   49755003  Morphologically abnormal structure   pydicom.sr.codedict (CID 7150, segmentation property category)
#   1386000   Intracranial hemorrhage (disorder)   pydicom.sr.codedict
#   274100004 Cerebral hemorrhage (disorder)       FHIR value set expanded on tx.fhir.org against SNOMED CT
#   21454007  Subarachnoid intracranial hemorrhage (disorder)   the same value set
#   35764002  Brain ventricle, 33930006 Cranial subarachnoid space, 12738006 Brain,
#   128319008 Intracranial structure               pydicom.sr.codedict (anatomic regions)
# Epidural, subdural and intraventricular hemorrhage: public sources disagree on their concept ids, so they
# carry the closest verified concept (intracranial hemorrhage); the segment label names the subtype, and
# intraventricular also carries its region (brain ventricle).
CATEGORY = ("49755003", "Morphologically abnormal structure")
INTRACRANIAL_HEMORRHAGE = ("1386000", "Intracranial hemorrhage")
SUBTYPE_TYPES = {"any": INTRACRANIAL_HEMORRHAGE,
                 "epidural": INTRACRANIAL_HEMORRHAGE,
                 "intraparenchymal": ("274100004", "Cerebral hemorrhage"),
                 "intraventricular": INTRACRANIAL_HEMORRHAGE,
                 "subarachnoid": ("21454007", "Subarachnoid intracranial hemorrhage"),
                 "subdural": INTRACRANIAL_HEMORRHAGE}
SUBTYPE_REGIONS = {"any": ("128319008", "Intracranial structure"),
                   "intraparenchymal": ("12738006", "Brain"),
                   "intraventricular": ("35764002", "Brain ventricle"),
                   "subarachnoid": ("33930006", "Cranial subarachnoid space")}


@dataclasses.dataclass(frozen=True)
class Segment:
  """One segment of the SEG: the mask value it stands for and its coded description."""

  value: int                          # the label value in the mask (mask.nii.gz)
  label: str                          # SegmentLabel
  subtypes: tuple[str, ...]           # the LABELS names it covers ("any": blood of unknown subtype)
  type: tuple[str, str]               # SegmentedPropertyType: SNOMED CT (code, meaning)
  region: tuple[str, str] | None      # AnatomicRegion: SNOMED CT (code, meaning), or None

  def to_dict(self, number: int) -> dict:
    return {"number": number, "mask_value": self.value, "label": self.label, "subtypes": list(self.subtypes),
            "category": {"scheme": "SCT", "code": CATEGORY[0], "meaning": CATEGORY[1]},
            "type": {"scheme": "SCT", "code": self.type[0], "meaning": self.type[1]},
            "region": None if self.region is None else {"scheme": "SCT", "code": self.region[0],
                                                        "meaning": self.region[1]}}


def _name(subtype: str) -> str:
  return f"{'intracranial' if subtype == 'any' else subtype} hemorrhage ({SHORT[subtype]})"


def label_space(subtypes: bool, classes: Sequence[Sequence[str]] | None = None) -> list[Segment]:
  """The segments of a mask's label space (predict's mask.nii.gz), by mask value.

  `subtypes` False: 1 = blood of unknown subtype. True: 1–5 = the LABELS index of the subtype; with a
  detector's `classes` (groups of subtypes), each group's smallest LABELS index stands for the group
  (a group of several, e.g. EDH/SDH, carries intracranial hemorrhage, the concept common to its subtypes).
  """
  if not subtypes:
    return [Segment(1, _name("any"), ("any",), SUBTYPE_TYPES["any"], SUBTYPE_REGIONS["any"])]
  if classes is None:
    groups = [(name,) for name in LABELS[1:]]
  else:
    groups = sorted((tuple(g) for g in classes), key=lambda g: min(LABELS.index(s) for s in g))
  out = []
  for group in groups:
    value = min(LABELS.index(s) for s in group)
    if len(group) == 1:
      out.append(Segment(value, _name(group[0]), group, SUBTYPE_TYPES[group[0]], SUBTYPE_REGIONS.get(group[0])))
    else:
      label = "/".join(SHORT[s] for s in group) + " hemorrhage (" + ", ".join(group) + ")"
      out.append(Segment(value, label, group, INTRACRANIAL_HEMORRHAGE, None))
  return out


def segment_numbers(mask: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
  """The mask's label values → segment numbers (1…N in `segments`' order; 0 stays 0), as uint8."""
  lut = np.zeros(256, np.uint8)
  for number, s in enumerate(segments, start=1):
    lut[s.value] = number
  mask = np.asarray(mask)
  unknown = sorted(set(np.unique(mask).tolist()) - {0} - {s.value for s in segments})
  if unknown:
    raise ValueError(f"mask values {unknown} are in no segment of the label space "
                     f"{[s.value for s in segments]}")
  return lut[mask.astype(np.uint8)]


# --- The source instances ---------------------------------------------------------------------------


def source_frames(files: Sequence, frame_numbers: Sequence[int] | None, num_slices: int) -> tuple[list, list[int]]:
  """Where each z slice's pixels lie, for the SEG's references: (the distinct source files, in the order the SEG
  lists them, and for each SEG frame the z index of the slice it holds).

  Single-frame sources (one file per slice): the files in z order, frame i = slice i. One enhanced multi-frame
  file holding every slice: that file, frame f = the slice whose frame number is f + 1 (highdicom maps the
  SEG's frames onto the source's frames in their order). A series of several multi-frame files is refused.
  """
  files = list(files)
  numbers = list(frame_numbers) if frame_numbers else [1] * num_slices
  if len(files) != num_slices or len(numbers) != num_slices:
    raise ValueError(f"the series lists {len(files)} files and {len(numbers)} frame numbers for {num_slices} slices")
  distinct = list(dict.fromkeys(files))
  if len(distinct) == num_slices:
    if any(n != 1 for n in numbers):
      raise ValueError(f"frame numbers {sorted(set(numbers))} in single-slice files")
    return distinct, list(range(num_slices))
  if len(distinct) == 1 and sorted(numbers) == list(range(1, num_slices + 1)):
    order = [0] * num_slices
    for z, n in enumerate(numbers):
      order[n - 1] = z
    return distinct, order
  raise ValueError(f"the series' {num_slices} slices lie in {len(distinct)} files, some holding several frames: "
                   "a DICOM SEG here references either one file per slice or one enhanced file holding every slice")


def read_sources(paths: Sequence, sop_uids: Sequence[str] = ()) -> list:
  """The source files' headers (no pixel data: highdicom reads geometry and identity only); each must be the
  instance the study read (its SOPInstanceUID among `sop_uids`, when given)."""
  import pydicom

  out = []
  for path in paths:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if sop_uids and ds.SOPInstanceUID not in sop_uids:
      raise ValueError(f"{path}: SOPInstanceUID {ds.SOPInstanceUID} is not one the study read")
    out.append(ds)
  return out


# --- The DICOM objects (built in memory) ----------------------------------------------------------------


def _code(pair):
  import highdicom as hd

  return hd.sr.CodedConcept(pair[0], "SCT", pair[1])


def _algorithm(identity: Mapping):
  import highdicom as hd
  from pydicom.sr.codedict import codes

  parameters = {k: str(v) for k, v in identity.items() if k != "version" and v is not None}
  return hd.AlgorithmIdentificationSequence(name=MANUFACTURER, family=codes.DCM.ArtificialIntelligence,
                                            version=str(identity.get("version") or "unknown"),
                                            parameters=parameters or None)


def segmentation(mask: np.ndarray, sources: Sequence, frame_slices: Sequence[int], segments: Sequence[Segment],
                 identity: Mapping):
  """A BINARY highdicom Segmentation of `mask` (uint8 [S, H, W], z order, the mask's label values) over the
  `sources` (`source_frames`' files, read by `read_sources`); SEG frame i holds slice `frame_slices[i]`.

  `identity`: {"version": ich-jax's, "bundle_sha256": the bundle's, ...}: the algorithm identification of
  every segment; the bundle's sha256 is also the DeviceSerialNumber (the model that made it). Empty frames
  are left out (highdicom's default; all of them kept when the mask is empty).
  """
  import highdicom as hd

  mask = np.asarray(mask)
  rows, cols = int(sources[0].Rows), int(sources[0].Columns)
  if mask.ndim != 3 or mask.shape[1:] != (rows, cols):
    raise ValueError(f"mask of shape {mask.shape} is not on the source grid: {rows} rows x {cols} columns")
  if sorted(frame_slices) != list(range(len(mask))):
    raise ValueError(f"SEG frames {list(frame_slices)} are not a permutation of the mask's {len(mask)} slices")
  pixels = segment_numbers(mask, segments)[np.asarray(frame_slices)]
  algorithm = _algorithm(identity)
  descriptions = [hd.seg.SegmentDescription(
      segment_number=n, segment_label=s.label, segmented_property_category=_code(CATEGORY),
      segmented_property_type=_code(s.type), algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
      anatomic_regions=None if s.region is None else [_code(s.region)]) for n, s in enumerate(segments, start=1)]
  version = str(identity.get("version") or "unknown")
  with warnings.catch_warnings():
    # highdicom warns about the source's own attributes (a one-component PatientName): the source's, not ours.
    warnings.simplefilter("ignore", UserWarning)
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions=version,
        device_serial_number=str(identity.get("bundle_sha256") or "unknown")[:64],
        content_label="ICH_MASK", content_description="ich-jax predicted hemorrhage (research)",
        # An empty mask keeps its frames (highdicom would anyway, with a logged warning): no blood is an answer.
        omit_empty_frames=bool(pixels.any()),
        series_description="ich-jax hemorrhage mask (research)")


def findings_lines(report: Mapping) -> list[str]:
  """The study-level findings as text lines (the Secondary Capture's panel and ImageComments): the disclaimer,
  the bundle, the threshold, per class its probability, decision and most suspicious slice, then an incomplete
  series' reasons and the predicted blood volume."""
  t = report["threshold"]
  lines = ["ich-jax hemorrhage triage", report["disclaimer"],
           f"Model bundle sha256 {report['bundle']['sha256'][:16]}",
           f"Threshold {t:.4f}: a class is POSITIVE when its most suspicious slice reaches it"]
  for name in LABELS:
    f = report["findings"][name]
    what = f"{SHORT[name]} {name}"
    if f["probability"] is None:
      lines.append(f"{what:<22} not predicted")
    else:
      decision = "POSITIVE" if f["positive"] else "negative"
      lines.append(f"{what:<22} probability {f['probability']:.4f}  {decision:<8}  slice {f['slice_index']}")
  if report.get("status") == "incomplete":
    lines.append("INCOMPLETE SERIES: " + "; ".join(report["completeness"]["reasons"]))
  volumes = report.get("volumes")
  if volumes:
    lines.append(f"Predicted blood volume {volumes['blood']['ml']:.2f} mL ({volumes['blood']['size_bin']})")
  return lines


def render_panel(lines: Sequence[str], width: int) -> np.ndarray:
  """The text lines, white monospace on black, as a uint8 RGB image `width` pixels wide."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  line_px, margin = 18, 8
  # Characters that fit: DejaVu Sans Mono at 10 pt (100 dpi) is about 8.4 pixels wide.
  per_line = max(20, (width - 2 * margin) // 9)
  wrapped = [chunk for line in lines for chunk in (textwrap.wrap(line, per_line, subsequent_indent="  ") or [""])]
  height = 2 * margin + line_px * len(wrapped)
  fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="black")
  canvas = FigureCanvasAgg(fig)
  for i, line in enumerate(wrapped):
    fig.text(margin / width, 1 - (margin + i * line_px) / height, line, ha="left", va="top", fontsize=10,
             family="monospace", color="white")
  canvas.draw()
  return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def findings_image(lines: Sequence[str], overview: np.ndarray | None = None) -> np.ndarray:
  """The Secondary Capture's pixels: the text panel above the overview (uint8 RGB, its top left corner), or the
  panel alone; at least `PANEL_WIDTH` wide, so the text stays legible beside a one-tile overview."""
  if overview is None:
    return render_panel(lines, PANEL_WIDTH)
  overview = np.asarray(overview, np.uint8)[..., :3]
  panel = render_panel(lines, max(overview.shape[1], PANEL_WIDTH))
  width = max(panel.shape[1], overview.shape[1])
  out = np.zeros((panel.shape[0] + overview.shape[0], width, 3), np.uint8)
  out[:panel.shape[0], :panel.shape[1]] = panel
  out[panel.shape[0]:, :overview.shape[1]] = overview
  return out


def _orientation_letters(orientation) -> tuple[str, str]:
  """PatientOrientation of a slice drawn as stored: the patient direction of its rows and of its columns (LPS
  letters of the dominant axis of ImageOrientationPatient's row and column cosines)."""
  letters = (("R", "L"), ("A", "P"), ("F", "H"))
  out = []
  for cosines in (orientation[:3], orientation[3:6]):
    axis = int(np.argmax(np.abs(cosines)))
    out.append(letters[axis][int(cosines[axis] > 0)])
  return out[0], out[1]


def secondary_capture(image: np.ndarray, source, comments: str, orientation):
  """A highdicom SCImage of `image` (uint8 RGB) in the study of `source` (a header of the series: patient and
  study modules copied), a new series; `comments` into ImageComments. The overview's tiles keep the slices'
  in-plane orientation (resized, never flipped), hence PatientOrientation from the series'."""
  import highdicom as hd

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(image, np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=_orientation_letters(np.asarray(orientation, float)),
        transfer_syntax_uid="1.2.840.10008.1.2.1")
  sc.SeriesDescription = "ich-jax findings (research)"
  sc.ImageComments = comments
  # A head is no paired body part: BodyPartExamined says so, and validators then ask for no Laterality.
  sc.BodyPartExamined = str(getattr(source, "BodyPartExamined", "") or "HEAD")
  return sc


# --- Writing (the edge) --------------------------------------------------------------------------------


def _save(ds, path: pathlib.Path) -> None:
  with atomic.open_write(path, "wb") as f:
    ds.save_as(f, enforce_file_format=True)


def identity(report: Mapping) -> dict:
  """What made the objects: ich-jax's version and git commit, the bundle's sha256."""
  ich = provenance.software()["ich_jax"]
  return {"version": ich.get("version"), "git_commit": ich.get("git_commit"),
          "bundle_sha256": report["bundle"]["sha256"]}


def write_outputs(folder, study, report: Mapping, *, mask: np.ndarray | None = None, subtypes: bool = False,
                  classes: Sequence[Sequence[str]] | None = None, overview=None) -> dict:
  """Writes seg.dcm (when `mask` is given) and overview_sc.dcm into `folder` for a DICOM `study`; returns
  report.json's "dicom_outputs": {"seg": {file, UIDs, segments, ...} or None, "secondary_capture": {...} or
  None, "why": {what was not written: the reason}}. A failure is recorded in "why", never raised: the
  prediction's other outputs stand without these.

  `mask`: uint8 [S, H, W] on the study's grid (z order), its values the label space of `subtypes` and
  `classes` (`label_space`). `overview`: the overview.png written beside, or None.
  """
  folder = pathlib.Path(folder)
  out: dict = {"seg": None, "secondary_capture": None, "why": {}}
  if study.source != "dicom":
    why = (f"the input is {study.source}, not DICOM: there are no source instances to reference and no DICOM "
           "study to add a series to")
    out["why"] = {"seg": why, "secondary_capture": why}
    return out
  series = study.geometry
  try:
    import highdicom  # the objects' builder: a missing install is recorded below, not raised

    out["highdicom"] = highdicom.__version__
    first = read_sources([series.files[0]])[0]
  except Exception as e:  # noqa: BLE001  (recorded in the report)
    why = f"failed: {type(e).__name__}: {e}"
    out["why"] = {"seg": why if mask is not None else _no_mask(), "secondary_capture": why}
    return out
  ids = identity(report)
  if mask is None:
    out["why"]["seg"] = _no_mask()
  else:
    try:
      files, frame_slices = source_frames(series.files, getattr(series, "frame_numbers", None), study.num_slices)
      sources = read_sources(files, set(study.slice_uids))
      segments = label_space(subtypes, classes)
      seg = segmentation(mask, sources, frame_slices, segments, ids)
      _save(seg, folder / SEG_FILE)
      out["seg"] = {"file": SEG_FILE, "sop_instance_uid": str(seg.SOPInstanceUID),
                    "series_instance_uid": str(seg.SeriesInstanceUID), "frames": int(seg.NumberOfFrames),
                    "referenced_instances": len(files),
                    "segments": [s.to_dict(n) for n, s in enumerate(segments, start=1)]}
    except Exception as e:  # noqa: BLE001
      (folder / SEG_FILE).unlink(missing_ok=True)
      out["why"]["seg"] = f"failed: {type(e).__name__}: {e}"
  try:
    lines = findings_lines(report)
    picture = None
    if overview is not None:
      from PIL import Image

      with Image.open(overview) as im:
        picture = np.asarray(im.convert("RGB"))
    image = findings_image(lines, picture)
    sc = secondary_capture(image, first, "\n".join(lines), series.orientation)
    _save(sc, folder / SC_FILE)
    out["secondary_capture"] = {"file": SC_FILE, "sop_instance_uid": str(sc.SOPInstanceUID),
                                "series_instance_uid": str(sc.SeriesInstanceUID), "rows": int(sc.Rows),
                                "columns": int(sc.Columns), "overview": picture is not None}
  except Exception as e:  # noqa: BLE001
    (folder / SC_FILE).unlink(missing_ok=True)
    out["why"]["secondary_capture"] = f"failed: {type(e).__name__}: {e}"
  return out


def _no_mask() -> str:
  return "the bundle has no segmentation or detector member: there is no mask to segment"


def written(dicom_outputs: Mapping) -> list[str]:
  """The files `write_outputs` wrote."""
  return [e["file"] for e in (dicom_outputs["seg"], dicom_outputs["secondary_capture"]) if e]


def notes(dicom_outputs: Mapping) -> list[str]:
  """report.md's lines on the DICOM objects: each written one with its SOPInstanceUID, each other one and why."""
  out = []
  for key, what in (("seg", "DICOM Segmentation"), ("secondary_capture", "DICOM Secondary Capture of the findings")):
    e = dicom_outputs[key]
    if e:
      out.append(f"{what}: {e['file']} (SOPInstanceUID {e['sop_instance_uid']})")
    else:
      out.append(f"no {what}: {dicom_outputs['why'][key]}")
  return out
