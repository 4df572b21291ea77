"""Studies and run folders for the bundle and prediction tests: phantom CT written as a scanner writes it, and
run folders as training leaves them."""
import dataclasses
import json
import shutil

import jax
import numpy as np
import pydicom

from ich_jax.data import dicom, phantom
from ich_jax.train import checkpoint, config_record, loop

# 128² phantoms at ~1.8 mm pixels, 5 mm slices: about ten slices, a bleed in each study.
SPEC = phantom.PhantomSpec(matrix=128, pixel_spacing_mm=(1.7, 1.9), slice_thickness_mm=(5.0,), max_slices=10,
                           p_hemorrhage=1.0)


def make_phantom(seed, slices=10):
  """10 slices cover 45 mm, less than a head (the study is incomplete); 18 cover 85 mm."""
  return phantom.make_phantom(seed, dataclasses.replace(SPEC, max_slices=slices))


def write_study(folder, p, *, decoys=True, **kw):
  """The phantom's soft-tissue axial series (random file names, nested), plus a bone-kernel twin and a sagittal
  reformat of the same study, and a stray text file: what a scanner folder holds."""
  study_uid = pydicom.uid.generate_uid(entropy_srcs=[str(folder)])
  spacing = (p.slice_thickness_mm, *p.pixel_spacing_mm)
  files = dicom.write_series(p.hu, spacing, folder / "a" / "b", study_uid=study_uid, file_names="random", rng=0,
                             z_positions=p.z_positions_mm, **kw)
  if decoys:
    dicom.write_series(p.hu, spacing, folder / "bone", study_uid=study_uid, kernel="BONE", series_number=2,
                       series_description="HEAD BONE", z_positions=p.z_positions_mm)
    sagittal = np.ascontiguousarray(p.hu[:, :, ::8].transpose(2, 1, 0))
    dicom.write_series(sagittal, (8 * p.pixel_spacing_mm[1], 5.0, p.pixel_spacing_mm[0]), folder / "sag",
                       study_uid=study_uid, orientation=(0, 1, 0, 0, 0, -1), series_number=3,
                       series_description="SAG MPR")
  (folder / "README.txt").write_text("exported by a PACS")
  return files


def make_run(config, workdir, seed):
  """A run's workdir as training leaves it (config.json, an Orbax checkpoint through the training
  Checkpointer), holding initial weights with BatchNorm statistics drawn away from 0/1: training adds nothing
  these tests check, and statistics a bundle forgot or applied in train mode would change every output."""
  exp = loop.make_experiment(config)
  state = exp.init_state()
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if name.endswith("mean/value"):
      return x + rng.normal(0, 0.2, x.shape).astype(x.dtype)
    if name.endswith("var/value"):
      return x * rng.uniform(0.5, 2.0, x.shape).astype(x.dtype)
    return x

  state["model_state"] = jax.tree_util.tree_map_with_path(perturb, state["model_state"])
  workdir.mkdir(parents=True)
  # config.json as loop.train writes it: the config and the run's provenance.
  config_record.record(workdir, config, at_step=0, provenance=config_record.run_provenance(config))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
  ckpt.save(1, state)
  ckpt.close()


def edited_bundle(src, dst, **fields):
  """A copy of bundle `src` at `dst` with manifest `fields` changed and the manifest's own hash recomputed: a
  consistent edit, which loads as a bundle but is not the one `verify` printed for `src`."""
  from ich_jax.bundle import format as bundle_format

  shutil.copytree(src, dst)
  manifest = json.loads((dst / "manifest.json").read_text())
  manifest.update(fields)
  manifest["hash"] = bundle_format.manifest_hash(manifest)
  (dst / "manifest.json").write_text(json.dumps(manifest))
  return dst
