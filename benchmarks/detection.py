"""Seconds per study of seed 001's detector (the whole Mask R-CNN: backbone, proposals with NMS, box head with
NMS, mask head and pasting), with each stage's share.

  python benchmarks/detection.py [--config configs/hybrid_maskrcnn.py] [--slices 32] [--size 512] \\
      [--batch 8] [--repeats 3] [--peer lax3d|none]

A study is `--slices` inputs of 5 × size × size (the slice and its neighbours,
seed 001's input), run in batches of `--batch` by the task's jitted
inference (`Detection.detect`); random weights (time does not depend on
them: every shape is fixed, NMS included). Stages are timed as separately
jitted functions on the same inputs (their sum is within a few percent of
the whole; the whole is the figure).

Peers, side by side in this process:
- `lax3d`: the same detector with its 3D convolutions run by XLA's own 3D
  convolution instead of `ich_jax.models.classifier`'s summed 2D
  convolutions (what the hybrid FPN's contracting arm did before: the ratio
  is what that path buys on this machine).
- Seed 001's published 0.121 s per study (Implementation: one GPU, its own
  TensorFlow code, studies of "typically" 30–40 slices) is printed as a
  ratio for reference only: other hardware, other code, nothing here can
  run it.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ich_jax import xla_flags  # noqa: E402

xla_flags.apply()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from ich_jax.experiments import sweep  # noqa: E402
from ich_jax.models import classifier  # noqa: E402
from ich_jax.train import loop  # noqa: E402

SEED001_S_PER_STUDY = 0.121   # seed 001, Implementation: "0.121 seconds per study" on one GPU


def _lax_3d(lhs, rhs, strides, padding, precision, preferred_element_type):
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NDHWC", "DHWIO", "NDHWC"))
  return jax.lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=dn, precision=precision,
                                      preferred_element_type=preferred_element_type)


def build(config):
  exp = loop.make_experiment(config)
  init = exp.init_state()
  model = nnx.merge(exp.graphdef_eval, init["params"], init["model_state"])
  task = exp.task
  graphdef, state = nnx.split(model)

  def whole(state, image):
    return task.predict(nnx.merge(graphdef, state), {"image": image})

  def backbone(state, image):
    return nnx.merge(graphdef, state).pyramid(image)

  def props(state, pyramid):
    return task.inference_proposals(nnx.merge(graphdef, state), pyramid, shape)

  def box_stage(state, pyramid, p, ok):
    return task.boxes_of(nnx.merge(graphdef, state), pyramid, p, ok, shape)

  def mask_stage(state, pyramid, det_boxes, det_scores, det_classes):
    m = nnx.merge(graphdef, state)
    pasted = task.masks_of(m, pyramid, det_boxes, det_classes, shape)
    return task.label_map(pasted, det_scores, det_classes)

  shape = (int(config.data.image_size),) * 2
  return state, {name: jax.jit(f) for name, f in (("whole", whole), ("backbone", backbone), ("proposals", props),
                                                   ("boxes", box_stage), ("masks", mask_stage))}


def run_study(fns, state, images, batch):
  """One study through the stages (timed each) and through the whole (timed). Returns seconds by stage."""
  out = {k: 0.0 for k in ("backbone", "proposals", "boxes", "masks", "whole")}
  for i in range(0, len(images), batch):
    x = images[i:i + batch]
    t = time.perf_counter()
    pyr = jax.block_until_ready(fns["backbone"](state, x))
    out["backbone"] += time.perf_counter() - t
    t = time.perf_counter()
    p, ok = jax.block_until_ready(fns["proposals"](state, pyr))
    out["proposals"] += time.perf_counter() - t
    t = time.perf_counter()
    det = jax.block_until_ready(fns["boxes"](state, pyr, p, ok))
    out["boxes"] += time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(fns["masks"](state, pyr, det["det_boxes"], det["det_scores"], det["det_classes"]))
    out["masks"] += time.perf_counter() - t
  for i in range(0, len(images), batch):
    t = time.perf_counter()
    jax.block_until_ready(fns["whole"](state, images[i:i + batch]))
    out["whole"] += time.perf_counter() - t
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/hybrid_maskrcnn.py")
  ap.add_argument("--slices", type=int, default=32)
  ap.add_argument("--size", type=int, default=512)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--peer", choices=("lax3d", "none"), default="lax3d")
  args = ap.parse_args()
  if args.slices % args.batch:
    raise SystemExit(f"--slices {args.slices} must be a multiple of --batch {args.batch}")
  config = sweep.load_python(args.config, "get_config")
  config.data.image_size = args.size
  config.train.batch_size = jax.device_count() * max(1, args.batch // jax.device_count())
  images = jnp.asarray(np.random.default_rng(0).normal(size=(args.slices, args.size, args.size, 5)), jnp.float32)

  variants = {"ours": None}
  if args.peer == "lax3d":
    variants["lax3d"] = _lax_3d
  results, compile_s = {}, {}
  original = classifier._conv3d_as_2d
  for name, patch in variants.items():
    classifier._conv3d_as_2d = patch or original
    try:
      state, fns = build(config)
      t = time.perf_counter()
      run_study(fns, state, images[:args.batch], args.batch)   # compiles every stage
      compile_s[name] = time.perf_counter() - t
      results[name] = [run_study(fns, state, images, args.batch) for _ in range(args.repeats)]
    finally:
      classifier._conv3d_as_2d = original

  print(f"Seed 001 detector ({args.config}), study of {args.slices} slices of 5 × {args.size}², batch {args.batch}, "
        f"median of {args.repeats}")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f}")
  ours = results["ours"]
  whole = statistics.median(r["whole"] for r in ours)
  staged = {k: statistics.median(r[k] for r in ours) for k in ("backbone", "proposals", "boxes", "masks")}
  total = sum(staged.values())
  print(f"ours: {whole:.2f} s per study (first call with compilation {compile_s['ours']:.0f} s)")
  for k, v in staged.items():
    print(f"  {k:<10} {v:7.2f} s  {100 * v / total:5.1f} %")
  print(f"  stages together {total:.2f} s")
  if "lax3d" in results:
    peer = statistics.median(r["whole"] for r in results["lax3d"])
    print(f"peer lax3d (XLA 3D convolutions): {peer:.2f} s per study; ours is {peer / whole:.2f}x faster")
  print(f"seed 001 published: {SEED001_S_PER_STUDY} s per study on one GPU (not measured here); "
        f"ours on this machine takes {whole / SEED001_S_PER_STUDY:.1f}x as long")


if __name__ == "__main__":
  main()
