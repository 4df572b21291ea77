"""Pretrained ImageNet weights: the command line over `ich_jax.models.weight_files` (which does the loading).

  python -m ich_jax.models.pretrained inspect FILE
  python -m ich_jax.models.pretrained convert IN OUT.safetensors --model NAME

`inspect` lists a weight file's tensors and shapes; `convert` loads a .pth or
.h5 file into model NAME (all or nothing) and writes its parameters under
ich-jax's names as safetensors, which later runs read without PyTorch.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from flax import nnx

from ich_jax import models
from ich_jax.models.weight_files import Weights, load, read, save_converted


def _classes_in(weights: Weights) -> int:
  for key in ("fc.weight", "last_linear.weight", "classifier.weight", "classifier.1.weight", "classifier.6.weight",
              "head.fc.weight", "classif.weight"):
    if key in weights.tensors:
      return int(weights.tensors[key].shape[0])
  if "predictions/kernel" in weights.tensors:
    return int(weights.tensors["predictions/kernel"].shape[-1])
  if "head.kernel" in weights.tensors:
    return int(weights.tensors["head.kernel"].shape[-1])
  return 1000


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ich_jax.models.pretrained", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("inspect", help="list a weight file's tensors and shapes")
  p.add_argument("file")
  p = sub.add_parser("convert", help="a .pth or .h5 file → an ich-jax .safetensors file (no PyTorch needed later)")
  p.add_argument("input")
  p.add_argument("output")
  p.add_argument("--model", required=True, help="ich-jax model name, e.g. densenet121")
  args = parser.parse_args(argv)
  if args.command == "inspect":
    weights = read(args.file)
    print(f"{weights.path}: {weights.convention} names, {len(weights.tensors)} tensors, "
          f"{sum(v.size for v in weights.tensors.values()):,} values")
    for key, value in weights.tensors.items():
      print(f"  {key:70s} {tuple(value.shape)}")
    return 0
  weights = read(args.input)
  variant = {"variant": "keras"} if weights.convention == "keras" and args.model in (
      "mobilenet_v2", "densenet121", "densenet169") else {}
  classes = _classes_in(weights)
  # Shapes only: the file fills every variable (a missing one is refused), so no random initialisation.
  model = nnx.eval_shape(lambda: models.build(args.model, num_classes=classes, in_channels=3, rngs=nnx.Rngs(0),
                                              **variant))
  report = load(model, args.model, args.input)
  save_converted(model, args.model, args.output, source=pathlib.Path(args.input).name)
  print(f"{report.summary()} → {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
