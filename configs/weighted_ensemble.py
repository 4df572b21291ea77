"""Seed 000 §2.2: a weighted ensemble of five Inception U-Nets, trained on subsets, and its tables.

  python launch.py --config configs/weighted_ensemble.py --workdir runs/weighted_ensemble
  python launch.py --config configs/weighted_ensemble.py:smoke --workdir /tmp/we    # CPU minutes, tests use it
  # the real data: an AI-Hub-like strongly annotated set is not public; the builders with masks are
  #   --config.dataset.name=physionet_ct_ich --config.dataset.config=slices256 --config.dataset.manual_dir=...

One command runs every stage through the shared loop (ich_jax/experiments/runner.py; the stages:
ich_jax/experiments/weighted_ensemble.py, their steps and overrides here in `experiment`), skipping finished
ones on a rerun, and writes report.md (`ich_jax.eval.ensemble_tables`):
  pretrain_encoder   the U-Net's encoder under a subtype head (multilabel BCE): Model 2's pre-training
  model1_all         Model 1: all ICH, balanced normal/lesion slices, subtypes balanced
  model2_pretrained  Model 2: the same, encoder initialised from pretrain_encoder
  model3_sdh         Model 3: subdural slices and as many normal ones
  model4_sah         Model 4: subarachnoid slices and as many normal ones
  model5_small       Model 5: slices of studies with ≤ 5 mL of blood and as many normal ones
  (each base model is exported: its maps of the held-out split become data)
  oof/<stage>/fold<k>, oof/<base>   the pre-training and each base model again on the training split's studies
                     outside fold k (k < experiment.map_folds = 5), exporting fold k's maps; assembled, each
                     training slice's map from the fold model that did not see it (<base>/export/<train split>)
  ensemble_basic / _sdh / _sah / _small / _all   the weight model on the maps of models 1+2, 1+2+3, 1+2+4,
                     1+2+5 and 1–5 (Dice loss; seed 000 §2.2.3), each evaluated on the held-out split
  report             Table 3, Table 4 against the strong-vs-weak classifiers (the strong runs in the
                     workdir experiment.strong_vs_weak of configs/strong_vs_weak.py), and the difficult cases

Choices the paper leaves open are said where they are made: the weight model trains on out-of-fold maps
of the training split (experiment.weight_maps; "in_sample", the full base models' maps of their own
training slices as configs/ensemble.py, is the option); its layers are the project's small CNN; batch
size and step counts are not in our copy of Supplementary Table S2. Training sets are balanced by scan,
as the paper's (data.sampling.mode "balanced_scans"; "balanced" balances slices instead).
"""
from ml_collections import ConfigDict

from configs import ensemble, segmentation
from configs.common import parse_arg
from ich_jax.data import windows
from ich_jax.experiments.weighted_ensemble import BASES, ENSEMBLES, PRETRAIN

# Table 3's rows: label → the ensemble stage (the base models it combines: ENSEMBLES).
TABLE3 = (("basic (1+2)", "ensemble_basic"), ("+SDH (1+2+3)", "ensemble_sdh"), ("+SAH (1+2+4)", "ensemble_sah"),
          ("+small (1+2+5)", "ensemble_small"), ("all five (1–5)", "ensemble_all"))
# Table 4 (seed 000 §3.4) compares the final ensemble with DenseNet121, InceptionResNetV2, MobileNetV2 and
# VGG19 trained on strong annotation: the strong-vs-weak experiment's workdirs (configs/strong_vs_weak.py).
CLASSIFIERS = ("densenet121", "inception_resnet_v2", "mobilenet_v2", "vgg19")


def get_config(arg: str | None = None) -> ConfigDict:
  smoke = parse_arg(arg, config="configs/weighted_ensemble.py", smoke=False).smoke
  # The base models are configs/segmentation.py's Inception U-Net (seed 000 §2.2.2: "2D U-net with the
  # Inception module", Dice loss, Adam at 1e-4, threshold 0.5), here with the paper's inputs and subsets.
  c = segmentation.get_config("inception_unet:smoke" if smoke else "inception_unet")
  c.dataset.kind = "slices"
  c.dataset.exports = ()                 # the weight-model stages get their base models' workdirs (links)
  # Seed 000 §2.1.4: stroke (width 40, level 40), brain (80/40), bone (3000/500) and the brain window after
  # skull stripping (classical mask here; the paper's in-house 3D U-Net is not public).
  c.data.recipe = windows.SEED000_4WINDOW
  # Seed 000 §2.2.1: "an equal number of brain CT scans with and without ICH", the subtype-specific sets
  # "balanced the number of normal and lesion cases equally": scans, every slice of each, drawn once.
  # (§2.1's classifiers balance slices and subtypes; "balanced" does that here.)
  c.data.sampling.mode = "balanced_scans"
  c.data.sampling.lesion = "any"
  c.data.sampling.balance_subtypes = False
  c.data.small_bleed_ml = 5.0            # seed 000 §2.2.1, Model 5: "small lesion (≤ 5 mL)"
  # Seed 000 names no augmentation; the pipeline's default linear warps (seed 002's magnitudes, no flips).
  c.model.init_from = ""                 # Model 2 gets pretrain_encoder's workdir (ich_jax.train.loop.load_pretrained)
  c.train.num_steps = 3000               # not in our copy of seed 000 (Supplementary Table S2)
  c.train.checkpoint_every = 500
  c.eval.threshold = 0.5                 # seed 000 §2.1.5: sensitivity and specificity at 0.5
  c.eval.n_boot = 50 if smoke else 500   # seed 000 §2.1.5: 500 bootstrap replications
  c.eval.baseline = False
  c.eval.figures = not smoke
  weights = ensemble.get_config("smoke" if smoke else None)

  e = c.experiment = ConfigDict()
  e.name = "weighted_ensemble"
  e.only = ()                            # stage names or folder prefixes to run alone (runner.run_stages)
  e.table3 = TABLE3
  # Which maps of the training split train the weight models (seed 000 §2.2.3 does not say):
  # "out_of_fold" (each slice's map from a base model trained without its study, as seed 003 stacks its
  # stages) or "in_sample" (the full base models' maps of their own training slices; no fold models).
  e.weight_maps = "out_of_fold"
  e.map_folds = 5                        # ours (seed 003 §2 folds its CNNs 5-fold); folds by study
  # Table 4's classifiers: the strong runs <strong_vs_weak>/<backbone>/strong of that experiment's workdir.
  e.strong_vs_weak = "runs/strong_vs_weak"
  e.classifiers = CLASSIFIERS

  e.templates = ConfigDict()
  # Model 2's pre-training: "down-sampling layers of U-net were pre-trained using hemorrhage subtype labeling"
  # (§2.2.2): the same encoder (width, depth, channels) under a six-label head, slice-label BCE.
  e.templates.pretrain = ConfigDict({
      "model": {"name": "inception_unet_encoder", "num_classes": 6},
      "task": {"name": "multilabel_classification"},
  })
  # The weight model (§2.2.3) on the frozen base models' maps: configs/ensemble.py's model, task and steps.
  e.templates.weights = ConfigDict({
      "dataset": {"kind": "base_maps"},
      "data": {"augment": {"enabled": False}},       # the maps were computed on unaugmented slices
      "model": weights.model.to_dict(), "task": weights.task.to_dict(), "optimizer": weights.optimizer.to_dict(),
      "train": {"num_steps": weights.train.num_steps},
  })

  # Each stage's steps, and overrides merged over the base (the pre-training over `templates.pretrain`, the
  # weight models over `templates.weights`); which stage reads which: ich_jax/experiments/weighted_ensemble.py.
  e.stages = ConfigDict()
  e.stages[PRETRAIN] = ConfigDict({"steps": ("train",)})
  for name in BASES:
    e.stages[name] = ConfigDict({"steps": ("train", "export"), "overrides": {}})
  e.stages.model3_sdh.overrides = ConfigDict({"data": {"sampling": {"lesion": "subdural"}}})
  e.stages.model4_sah.overrides = ConfigDict({"data": {"sampling": {"lesion": "subarachnoid"}}})
  e.stages.model5_small.overrides = ConfigDict({"data": {"sampling": {"lesion": "small"}}})
  for stage, _ in ENSEMBLES:
    e.stages[stage] = ConfigDict({"steps": ("train", "eval")})

  if smoke:
    # tiny's 12 training studies hold no subarachnoid slice, which Model 4 trains on: the smoke trains on
    # train+test so every base model has its lesion. A check of the code path, not a measurement.
    c.dataset.train_split = "train+test"
    # tiny's one subarachnoid study lies in one fold, so one fold model of Model 4 would have no lesion to
    # train on: the smoke's weight models read in-sample maps (the out-of-fold path is tested on Model 1,
    # tests/experiments/test_weighted_ensemble.py).
    e.weight_maps = "in_sample"
    e.map_folds = 2
    # Table 4 against a strong-vs-weak smoke run only when named (--config.experiment.strong_vs_weak=W),
    # never against the full experiment's runs/strong_vs_weak (scans of another dataset build).
    e.strong_vs_weak = ""
    c.data.read_threads = 2
    c.data.prefetch_batches = 2
    c.train.num_steps = 2
    c.train.checkpoint_every = 2
  return c
