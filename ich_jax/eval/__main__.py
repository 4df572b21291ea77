"""Evaluate exported predictions, no model needed.

  python -m ich_jax.eval --predictions preds.csv [--labels labels.csv] [--compare other.csv] [--out DIR]

Writes metrics.json, report.md, difficult_scans.csv and ROC figures (plus
volumes.csv and volumes.png when the predictions are a run's predictions.npz
with masks) into --out, default `<predictions stem>_eval/` beside the
predictions file, and prints the short table. The CSV formats are described in
ich_jax/eval/prediction_files.py.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from ich_jax.eval import classification, prediction_files, report, report_text


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ich_jax.eval", description=__doc__.split("\n\n")[0])
  p.add_argument("--predictions", required=True, type=pathlib.Path,
                 help="predictions CSV (study_id, series_id, slice_index, prob_<label>...) or a run's predictions.npz")
  p.add_argument("--labels", type=pathlib.Path, help="labels CSV (study_id, series_id, slice_index, <label>...); "
                 "replaces label columns of --predictions")
  p.add_argument("--compare", type=pathlib.Path, help="a second predictions file on the same slices: DeLong tests")
  p.add_argument("--out", type=pathlib.Path, help="output folder (default: <predictions stem>_eval beside it)")
  p.add_argument("--threshold", type=float, default=0.5, help="operating threshold (seed 000: 0.5)")
  p.add_argument("--n-boot", type=int, default=500, help="bootstrap replications for AUC CIs (seed 000: 500; 0: none); "
                 "the time grows with slices × replications (~1 s per 100 replications per class per 100k slices)")
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if not 0 <= args.threshold <= 1:
    raise SystemExit(f"--threshold={args.threshold} must be in [0, 1]")
  if args.n_boot < 0:
    raise SystemExit(f"--n-boot={args.n_boot} must be >= 0")
  try:
    preds = prediction_files.read_predictions(args.predictions)
    if args.labels:
      preds = prediction_files.attach_labels(preds, prediction_files.read_labels(args.labels),
                                             names=(str(args.predictions), str(args.labels)))
    compare = None
    names = (args.predictions.stem, None)
    if args.compare:
      compare = prediction_files.align(preds, prediction_files.read_predictions(args.compare),
                                       names=(str(args.predictions), str(args.compare)))
      names = (args.predictions.stem, args.compare.stem)
      if names[0] == names[1]:
        names = (str(args.predictions), str(args.compare))
    metrics = classification.classification_metrics(preds, threshold=args.threshold, compare=compare, names=names,
                                                    n_boot=args.n_boot, seed=args.seed)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  metrics["source"] = str(args.predictions)
  out = args.out or args.predictions.parent / f"{args.predictions.stem}_eval"
  report.write_report(metrics, preds, out, compare=compare, figures=not args.no_figures,
                      title=f"Evaluation of {args.predictions.name}")
  print(report_text.format_table(metrics))
  print(f"\nWrote {out / 'report.md'} and {out / 'metrics.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
