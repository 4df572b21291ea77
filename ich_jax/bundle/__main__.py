"""The bundle command line: write a run folder's bundle, combine bundles, verify one.

  python -m ich_jax.bundle export --run W/STAGE --out DIR                    # a run folder, by its config.json
  python -m ich_jax.bundle export --run W --out DIR                          # an experiment: its final stage
  python -m ich_jax.bundle combine --out DIR --average B1 B2 [--mask B3]     # ensembles of bundles
  python -m ich_jax.bundle verify DIR                                        # hashes, members, provenance
  python -m ich_jax.bundle evaluate --model DIR --dataset cq500/slices256:test --manual-dir D --out OUT
                                                                             # a bundle on any builder's split
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ich_jax import atomic, extras, lock
from ich_jax.bundle.combine import combine
from ich_jax.bundle.format import FORMAT, BundleError, describe_provenance, read_manifest
from ich_jax.bundle.members import window


def main(argv: Sequence[str] | None = None) -> int:
  import ich_jax.bundle

  parser = argparse.ArgumentParser(prog="python -m ich_jax.bundle", description=ich_jax.bundle.__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("combine", help="one bundle from several: averaged probabilities, a segmentation's mask")
  c.add_argument("--out", required=True, help="the new bundle folder")
  c.add_argument("--average", nargs="+", required=True, help="bundles whose per-slice probabilities are averaged")
  c.add_argument("--mask", help="a segmentation or detector bundle whose mask (and volumes) the new bundle reports")
  c.add_argument("--threshold", type=float, help="operating threshold (default: the inputs' common one)")
  e = sub.add_parser("export", help="the bundle of a run folder (an experiment's stage: W/ensemble_all, "
                     "W/fold0/patch_unet; seed 003's combined stages W/ensemble, W/B/seq2 as their fold "
                     "models and the means between them), from its config.json and checkpoints")
  e.add_argument("--run", required=True, help="a run folder with config.json and checkpoints/, a seed 003 "
                 "combined stage (combined.json), or an experiment's root (its final stage)")
  e.add_argument("--out", help="the bundle folder (default RUN/bundle)")
  x = sub.add_parser("evaluate", help="a bundle on another builder's split (an external test set): predictions, "
                     "seed 003 Table 4, reader agreement")
  x.add_argument("--model", required=True, help="the bundle folder")
  x.add_argument("--dataset", required=True, help="name/config:split, e.g. cq500/slices256:test, "
                 "physionet_ct_ich/slices256:fold0+fold1+fold2+fold3+fold4")
  x.add_argument("--out", required=True, help="the output folder (predictions.csv, report.md, metrics.json)")
  x.add_argument("--data-dir", default="data/tfds", help="where the dataset is (or is built)")
  x.add_argument("--manual-dir", default="", help="the dataset's download, to build it on first use")
  x.add_argument("--threshold", type=float, help="operating threshold (default: the bundle's)")
  x.add_argument("--n-boot", type=int, default=500, help="bootstrap replications for the 95%% CIs")
  v = sub.add_parser("verify", help="check a bundle's hashes, print its identity (SHA-256), list its members and "
                     "what made them (provenance: software, dataset, splits, config hash)")
  v.add_argument("bundle")
  v.add_argument("--expect-sha256", metavar="SHA256", help="also fail unless the identity is this one")
  args = parser.parse_args(argv)
  if args.command in ("export", "evaluate"):
    extras.require_training(f"ich-jax-bundle {args.command}")
  try:
    if args.command == "combine":
      path = combine(args.out, args.average, args.mask, threshold=args.threshold)
      print(f"Wrote {path} ({len(read_manifest(path)['members'])} members)")
    elif args.command == "export":
      # Imported here: export needs the training install, verify and combine do not.
      from ich_jax.bundle.export import export_bundle

      export_bundle(None, args.run, args.out)
    elif args.command == "evaluate":
      from ich_jax.bundle.evaluate import evaluate

      evaluate(args.model, args.dataset, args.out, data_dir=args.data_dir, manual_dir=args.manual_dir,
               threshold=args.threshold, n_boot=args.n_boot)
    else:
      manifest = read_manifest(args.bundle, expected_sha256=args.expect_sha256)
      print(f"{args.bundle}: {FORMAT} v{manifest['version']}, sha256 {manifest['sha256']} (pin it: "
            f"predict --expect-sha256), threshold {manifest['threshold']}")
      print(f"  files: {len(manifest['files'])} listed and hashed: "
            + ", ".join(sorted(manifest["files"])))
      for e in manifest["members"]:
        w = window(e)
        print(f"  {e['name']}: {e['role']}" + (f" {e['model']['name']}" if e["model"] else "")
              + (f" <- {e['inputs']}" if e["inputs"] else "")
              + (f", sliding window {w['patch']}/{w['stride']}" if w else ""))
      print(f"  outputs: {json.dumps(manifest['outputs'])}")
      print("\n".join(f"  {line}" for line in describe_provenance(manifest)))
  except (BundleError, FileNotFoundError, KeyError, ValueError, atomic.NotOurs, lock.Locked) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
