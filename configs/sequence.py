"""Seed 003's sequence models on exported stage outputs: seq_gru_1 (stage 2) and seq_gru_2 (stage 3).

  # Stage 1, then its export (written once; the sequence stages never rerun the CNN):
  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode export_features
  # Stage 2 on the CNN's features; its own export is a stage for model 2:
  python launch.py --config configs/sequence.py:seq_gru_1 --workdir runs/seq_gru_1
  python launch.py --config configs/sequence.py:seq_gru_1 --workdir runs/seq_gru_1 --mode export_features
  # Stage 3 on the CNN's and model 1's predictions + slice gap:
  python launch.py --config configs/sequence.py:seq_gru_2 --workdir runs/seq_gru_2

The argument is comma-separated: the model (seq_gru_1, the default, or
seq_gru_2), then optionally `smoke` (tiny widths, 2 steps; tests use it) and
`fold=K` (train on folds != K of the exports' train split, evaluate on fold K,
10 folds by study). Point `--config.dataset.exports="('W1', 'W2')"` at other runs' workdirs.

Without folds, model 1's exported train-split predictions are in-sample, so
model 2 learns from predictions better than it will see at test time; seed 003
stacks out-of-fold predictions (configs/rsna_cascade.py runs the folds).
"""
from ml_collections import ConfigDict

from configs.common import parse_arg
from ich_jax.data import stage_exports

MODELS = ("seq_gru_1", "seq_gru_2")
NUM_FOLDS = 10          # seed 003 §2 "Network training procedure": 10-fold cross-validation


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, config="configs/sequence.py", models=MODELS, smoke=False, fold=(None, int))
  model, smoke, fold = a.model, a.smoke, a.fold
  c = ConfigDict()
  c.seed = 0

  c.dataset = ConfigDict()
  c.dataset.kind = "series_features"
  # The dataset the exports were made from (named in reports).
  c.dataset.name = "synthetic_ich"
  c.dataset.config = "small"
  # Workdirs of runs exported with --mode export_features. Model 1 reads the
  # features of each (K feature sets: model option num_feature_sets = K); model
  # 2 the predictions of all (the CNNs' and model 1's, seed 003 Fig. 1).
  c.dataset.exports = ("runs/quickstart",) if model == "seq_gru_1" else ("runs/quickstart", "runs/seq_gru_1")
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  if fold is not None:
    c.dataset.train_split = f"train[fold!={fold}/{NUM_FOLDS}]"
    c.dataset.eval_split = f"train[fold={fold}/{NUM_FOLDS}]"

  c.data = stage_exports.default_data_config()
  c.data.train_length = 24      # seed 003 §2 "Network training procedure": random subsampling of 24 slices

  c.model = ConfigDict()
  c.model.name = model
  # Layer sizes: the public code's (SequenceModel/main.py), the models' defaults.
  c.model.options = ConfigDict()

  c.task = ConfigDict()
  c.task.name = "sequence_classification"
  c.task.inputs = "features" if model == "seq_gru_1" else "stage_predictions"
  c.task.label_weights = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)   # seed 003 §2 eq. (1): "any" weighted 2

  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"      # seed 003 §2 "Network training procedure": Adam, initial rate 0.0004,
  c.optimizer.learning_rate = 4e-4
  c.optimizer.schedule = "step"  # ×0.1 at the 20th and the 30th of 40 epochs
  c.optimizer.step_factor = 0.1
  c.optimizer.step_fractions = (0.5, 0.75)
  c.optimizer.weight_decay = 0.0  # the paper states weight decay for the CNN only

  c.train = ConfigDict()
  c.train.batch_size = 128       # seed 003 §2: mini-batches of 128 CT scans
  c.train.epochs = 40            # seed 003 §2: 40 epochs
  # Training series // batch size: RSNA batch 1 (19,530 scans), 9 of 10 folds
  # → 17,577 series → 137; synthetic_ich/small's 200 → 1. Set it for the exports.
  c.train.steps_per_epoch = 1
  c.train.num_steps = c.train.get_ref("epochs") * c.train.get_ref("steps_per_epoch")
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.train.progress = True

  c.eval = ConfigDict()
  c.eval.batch_size = 32         # series per batch, each padded to the split's longest
  c.eval.threshold = 0.5
  c.eval.baseline = False        # the bright-fraction baseline scores images; these inputs have none

  if smoke:
    c.dataset.config = "tiny"
    c.dataset.exports = ("/tmp/ich_smoke/quickstart",) + (() if model == "seq_gru_1" else ("/tmp/ich_smoke/seq_gru_1",))
    c.data.train_length = 6       # tiny's series have up to 8 slices: windows still crop
    c.model.options = (ConfigDict({"widths": (16, 8), "hidden": 8}) if model == "seq_gru_1"
                       else ConfigDict({"widths": (8, 8, 8, 8), "hidden": 8}))
    c.train.batch_size = 8
    c.train.epochs = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.progress = False
    c.eval.batch_size = 8
    c.eval.figures = False
  return c
