"""End-to-end prediction on one study: seconds per study, split into read, preprocess, model and write.

  python benchmarks/predict.py [--models small_cnn,densenet121] [--repeats 3] [--slices 32] [--bundle DIR]

The study: a phantom head CT (`ich_jax.data.phantom`, 512×512, 2.5 mm
slices, `--slices` of them, a bleed in it) written to disk as a DICOM series
by `ich_jax.data.dicom.write_series` (random file names). Each model is a
bundle (`ich_jax.bundle`) with initial weights (speed does not depend on
them) or `--bundle` (e.g. the exported quickstart run):

- small_cnn: the quickstart's model and input (configs/quickstart.py: 128×128,
  three windows, widths 16/32/64/96);
- densenet121: a seed-sized backbone, 256×256 with the same three windows (the
  size benchmarks/models.py times).

Per study, `ich_jax.predict.predict_study` exactly as the CLI runs it (after
the bundle is loaded and compiled, as in batch mode): read (series choice from
headers, DICOM decode, HU, sorting), preprocess (`slice_inputs.load` per slice:
windows, resize), model (the jit-compiled members and the overview's
Grad-CAM), write (predictions.csv, report.json/md, overview.png). One untimed
study first (compilation, imports), then `--repeats` timed ones; medians of
wall-clock and of process CPU seconds (CPU time counts XLA's threads too, but
survives other load on a shared machine). Prints the split and the non-model
share (target <= 20 %), and the machine's load (`uptime`).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

STAGES = ("read", "preprocess", "model", "write")


def _config(name: str):
  from configs import quickstart

  c = quickstart.get_config()
  if name == "densenet121":
    c.model.name = "densenet121"
    c.model.options = {}
    c.data.image_size = 256
  elif name != "small_cnn":
    raise SystemExit(f"--models: unknown {name!r}; expected small_cnn, densenet121")
  return c


def make_bundle(name: str, out: pathlib.Path) -> pathlib.Path:
  """A one-classifier bundle of `name` with initial weights (configs as in the module docstring)."""
  import jax
  from flax import nnx

  from ich_jax import LABELS, models
  from ich_jax.bundle import format as bundle_format

  c = _config(name)
  jax.config.update("jax_default_prng_impl", "rbg")   # eager init: one kernel per weight shape, rbg is faster
  model = models.build(c.model.name, num_classes=len(LABELS), in_channels=len(c.data.recipe), rngs=nnx.Rngs(0),
                       **c.model.options)
  jax.config.update("jax_default_prng_impl", "threefry2x32")
  _, params, rest = nnx.split(model, nnx.Param, ...)
  entry, arrays, _ = bundle_format.member_entry(
      name, model={"name": c.model.name, "num_classes": len(LABELS), "in_channels": len(c.data.recipe),
                   "options": c.model.options}, task=c.task, state={"params": params, "model_state": rest},
      data=bundle_format.data_entry(c.data), source={"benchmark": "initial weights"})
  return bundle_format.write(out, [(entry, arrays)], {"probabilities": {"combine": "mean", "members": [name]},
                                                      "gradcam": name}, threshold=c.eval.threshold)


def write_study(folder: pathlib.Path, slices: int) -> pathlib.Path:
  from ich_jax.data import dicom, phantom

  spec = phantom.PhantomSpec(matrix=512, pixel_spacing_mm=(0.45, 0.45), slice_thickness_mm=(2.5,),
                             max_slices=slices, p_hemorrhage=1.0)
  p = phantom.make_phantom(7, spec)
  if len(p.hu) != slices:
    raise SystemExit(f"the phantom covers {len(p.hu)} slices, not {slices}: ask for fewer")
  dicom.write_series(p.hu, (p.slice_thickness_mm, *p.pixel_spacing_mm), folder, z_positions=p.z_positions_mm,
                     file_names="random", rng=0)
  return folder


def time_model(bundle_dir: pathlib.Path, study: pathlib.Path, work: pathlib.Path, repeats: int) -> dict:
  import time

  from ich_jax import bundle as bundle_lib
  from ich_jax import predict

  options = predict.Options(progress=False)
  start = time.perf_counter()
  b = bundle_lib.load(bundle_dir)
  b.warm_up(options.batch_size, gradcam_batch=predict.OVERVIEW_SLICES)
  load_s = time.perf_counter() - start
  predict.predict_study(b, study, work / "warm", options)       # imports, first writes
  runs = [predict.predict_study(b, study, work / f"run{i}", options)["timings"] for i in range(repeats)]
  wall = {s: statistics.median(r[f"{s}_s"] for r in runs) for s in STAGES}
  cpu = {s: statistics.median(r["cpu_s"][s] for r in runs) for s in STAGES}
  return {"load_s": load_s, "wall": wall, "cpu": cpu, "runs": runs,
          "members": b.describe()}


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  except OSError:
    return "uptime unavailable"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="small_cnn,densenet121")
  parser.add_argument("--bundle", help="time this bundle instead of --models")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--slices", type=int, default=32)
  parser.add_argument("--workdir", help="keep the study, bundles and outputs here (default: a temp dir)")
  args = parser.parse_args()
  from ich_jax import xla_flags

  xla_flags.apply()
  import jax

  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_predict_"))
  work.mkdir(parents=True, exist_ok=True)
  print(f"start: {_uptime()}", flush=True)
  study = write_study(work / "study", args.slices)
  print(f"study: {args.slices} slices of 512×512 written by write_series to {study}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({os.cpu_count()} CPUs)", flush=True)
  targets = [("bundle", pathlib.Path(args.bundle))] if args.bundle else [
      (name, make_bundle(name, work / f"bundle_{name}")) for name in args.models.split(",")]
  for name, bundle_dir in targets:
    r = time_model(bundle_dir, study, work / f"out_{name}", args.repeats)
    size = r["members"][0]["image_size"]
    print(f"\n{name} ({r['members'][0]['model']}, {size}×{size} input): bundle load + compile {r['load_s']:.2f} s; "
          f"per study, median of {args.repeats}", flush=True)
    for kind in ("wall", "cpu"):
      t = r[kind]
      total = sum(t.values())
      split = "  ".join(f"{s} {t[s]:.3f} s ({100 * t[s] / total:.0f}%)" for s in STAGES)
      print(f"  {kind:4}: total {total:.3f} s = {split}; non-model share {100 * (total - t['model']) / total:.1f}%",
            flush=True)
  print(f"\nend: {_uptime()}", flush=True)


if __name__ == "__main__":
  main()
