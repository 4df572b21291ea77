"""Synthetic head CT studies in Hounsfield units, with per-subtype hemorrhage masks.

`make_phantom(seed, spec)` is deterministic in (seed, spec). The head is built in
a head frame (mm; x = patient left, y = posterior, z = superior, origin at the
centre of the cranial vault) and cut by the scanner's slice planes, which carry
an in-plane rotation, a slight pitch and an in-plane offset. Everything is an
analytic field evaluated per slice, in float32:

* the concentric layers (skin, fat, outer table, diploë, inner table, the
  intracranial boundary) are functions of one normalised ellipsoidal radius,
  looked up in a per-slice table that is box-filtered over the voxel footprint
  (pixel size in-plane, slice thickness along z): partial volume without
  supersampling, and a skull cut tangentially near the vertex blurs as it should;
* the cortex is a distance-to-CSF field: sulci are the zero set of a few plane
  waves on the unit sphere, so they run radially from the surface like real
  sulci; the grey ribbon lines the surface, the sulci, the interhemispheric
  fissure and the skull base;
* deep structures (ventricles, cisterns, nuclei, brainstem, calcifications) are
  ellipsoids evaluated only inside their bounding boxes, their partial volume
  taken from the field's gradient over the voxel;
* bleeds are rendered before the slices, in their own bounding boxes, averaged
  over 1 (thin slices) or 3 sub-slice samples; the mask is the centre sample
  (voxel centre inside the bleed), so labels, masks and volumes agree exactly.

Why a density threshold must not solve it (the quickstart's no-learning
baseline counts 50–90 HU pixels): noise and calibration vary per study; normal
anatomy reaches 50–90 HU (calcification rims, a dense falx, tentorium and
sagittal sinus, beam hardening at the skull base, partial volume with bone);
and many bleeds are small, thin or near-isodense. Shape and location stay
learnable: lens vs crescent against the inner table, blood-filled sulci and
cisterns, a fluid level in the occipital horns, a blob in the parenchyma.

Modules, in the order a study is made: `spec` (what a study is drawn from and
what it holds), `geometry` (planes, ellipsoids, partial volume), `head` (the
head, its deep structures and fields), `scanner` (the slice planes), `bleeds`,
`mimics`, `slices` (one slice's HU) and `study` (`make_phantom`).
"""
from ich_jax.data.phantom.mimics import MIMICS  # noqa: F401
from ich_jax.data.phantom.spec import SEED001_SIZE_MIX, Phantom, PhantomSpec  # noqa: F401
from ich_jax.data.phantom.study import make_phantom, noise_sd  # noqa: F401
