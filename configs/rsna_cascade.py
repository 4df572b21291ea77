"""Seed 003 (RSNA 2019 1st place, Wang et al. 2021): the whole cascade as one command, Tables 3 and 4 at the end.

  python launch.py --config configs/rsna_cascade.py --workdir runs/rsna_cascade            # phantoms (GPUs)
  python launch.py --config configs/rsna_cascade.py:smoke --workdir /tmp/cascade          # CPU minutes
  python launch.py --config configs/rsna_cascade.py --workdir runs/rsna_cascade \\
      --config.dataset.name=rsna_ich --config.dataset.config=slices256_stage1 \\
      --config.dataset.manual_dir=/data/rsna

Stage 1: K-fold (by study) 2D CNNs for each backbone; their out-of-fold
features and probabilities are exported once; stages 2 and 3: seq_gru_1 and
seq_gru_2, J-fold; the ensemble averages the backbones (stages and folders:
ich_jax/experiments/rsna_cascade.py). A rerun skips finished stages and
resumes an interrupted one.

Arguments (comma-separated): `smoke` (synthetic_ich/tiny, three small_cnn
widths standing in for the three backbones, 2 folds per stage, a few steps:
the same code path in CPU minutes), `neighbours` (the public code's
neighbouring-slice recipe instead of the paper's three windows, each slice in
the fixed brain window 40/80; add --config.cnn.data.intensity=dicom_window for
the public code's own rule, each slice in its DICOM header window, min-max
scaled: rsna_ich stores those windows, the phantoms and PhysioNet's NIfTI do not).

Table 3 is scored on the labelled RSNA stage-1 test set: rsna_ich's `*_stage1`
configs (slices256_stage1 above) hold exactly those images out as `test`, by
patient (stage_1_sample_submission.csv in manual_dir; docs/datasets.md). The
standard configs' `test` (stage_2_test) is unlabelled: with them, evaluate on
`validation` (--config.dataset.eval_split=validation, 10 % of the patients).
"""
from ml_collections import ConfigDict

from configs import sequence
from configs.common import parse_arg
from ich_jax.data import config_defaults, windows

def _cnn(neighbours: bool) -> ConfigDict:
  """Stage 1: the 2D CNN (model name and options per backbone, config.backbones)."""
  c = ConfigDict()
  c.data = config_defaults.default_data_config()
  # The paper states no input size; its public code trains all three at 256 (README, train commands).
  c.data.image_size = 256
  # Seed 003 §2 "Window settings": brain 40/80, subdural 80/200, bone 600/2800 on one slice, the paper's
  # recipe; the public code stacks slices s-1, s, s+1 (`neighbours`). The paper has no neighbour recipe; the
  # public code windows each slice by its own DICOM header window and min-max scales it (2DNet prepare_data.py:
  # data.intensity "dicom_window"). Default here: the fixed 40/80 ("window"), which runs on every dataset the
  # cascade reads; the header rule needs records carrying `dicom_window` (rsna_ich, DICOM studies) and refuses
  # the others (phantoms, PhysioNet's NIfTI).
  c.data.recipe = [list(t) for t in (windows.RSNA_NEIGHBOURS if neighbours else windows.RSNA_3WINDOW)]
  # Seed 003 §2 "Network training procedure": random cropping, scaling, flipping and rotation. Magnitudes from
  # the public code (2DCNN predict.py aug_image): flip p=0.5, rotation ±30°, shift ±10 %, scale ±10 %, then a
  # random 60–99 % crop resized back (a ×1.01–1.67 zoom); as one isotropic scale: ×0.9–1.8. No shear.
  a = c.data.augment
  a.hflip = True
  a.vflip = False
  a.rotation_deg = 30.0
  a.shift_frac = 0.1
  a.scale_range = (0.9, 1.8)
  a.shear_deg = 0.0

  c.model = ConfigDict({"name": "", "options": ConfigDict()})

  c.task = ConfigDict()
  c.task.name = "multilabel_classification"
  c.task.label_weights = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)   # seed 003 §2 eq. (1): w = 2 for "any", 1 per subtype

  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"               # seed 003 §2 "Network training procedure": Adam,
  c.optimizer.learning_rate = 5e-4        # initial learning rate 0.0005,
  c.optimizer.schedule = "cosine"         # cosine annealing (Loshchilov and Hutter),
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 2e-5         # "a weight decay of 0.00002 is added to the cost function"
  c.optimizer.weight_decay_mode = "l2"

  c.train = ConfigDict()
  c.train.batch_size = 32                 # seed 003 §2: mini-batches of 32 slices
  # The paper states no epoch count (its public code runs 80 epochs of warm-restarted cosine from ImageNet
  # weights, 2DCNN train.py); one cosine cycle over `epochs` here. steps_per_epoch 0: counted from the fold.
  c.train.epochs = 10
  c.train.steps_per_epoch = 0
  c.train.num_steps = 0
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 2
  c.train.progress = True

  c.eval = ConfigDict({"batch_size": 64, "threshold": 0.5, "baseline": False})
  return c


def _sequence(model: str) -> ConfigDict:
  """Stages 2 and 3 (configs/sequence.py: seed 003's numbers); dataset and folds come from the experiment."""
  c = sequence.get_config(model)
  del c.dataset
  c.train.steps_per_epoch = 0          # counted from the fold's series: epochs × series // 128
  return c


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, config="configs/rsna_cascade.py", smoke=False, neighbours=False)
  smoke = a.smoke
  c = ConfigDict()
  c.seed = 0

  # Shared by every stage. Phantoms by default (small256: the same phantoms as the quickstart at 256).
  c.dataset = ConfigDict()
  c.dataset.name = "synthetic_ich"
  c.dataset.config = "small256"
  c.dataset.data_dir = "data/tfds"
  c.dataset.manual_dir = ""
  c.dataset.train_split = "train"      # folds are made inside it, by study
  c.dataset.eval_split = "test"        # Tables 3 and 4 (rsna_ich: a *_stage1 config, whose test is labelled)

  c.experiment = ConfigDict()
  c.experiment.name = "rsna_cascade"
  # Seed 003 §2 "System design": SE-ResNeXt101, DenseNet169 and DenseNet121 as the stage-1 backbone.
  c.experiment.backbones = ("se_resnext101_32x4d", "densenet169", "densenet121")
  c.experiment.cnn_folds = 5           # seed 003 §2: "5-fold cross-validation" of the CNN classifier
  c.experiment.sequence_folds = sequence.NUM_FOLDS   # seed 003 §2: 10-fold for both sequence models
  c.experiment.only = ()               # stage names or folder prefixes to run alone ("densenet121/")
  # Seed 003 Table 4 scores the RSNA-trained ensemble on PhysioNet-ICH and CQ500 too: every model also runs on
  # these sets ("name[/builder config]:split", comma-separated; ich_jax.data.external) and the stage
  # `external` prints Table 4 with one column per set. On the phantoms: 300 other patients (small_dev256).
  # On RSNA: "cq500:test,physionet_ct_ich:fold0+fold1+fold2+fold3+fold4" with their downloads in
  # external_manual_dir.
  c.experiment.external = "synthetic_ich/small_dev256:test"
  c.experiment.external_manual_dir = ConfigDict({"cq500": "", "physionet_ct_ich": "", "rsna_ich": ""})

  # Per backbone: the registered model, its options and its ImageNet weights. Seed 003's public code fine-tunes
  # Cadene's se_resnext101_32x4d and torchvision's DenseNets (lr 5e-4, 10 epochs is a fine-tuning recipe);
  # no file can be fetched by ich-jax, so `pretrained` names none: set it to the downloaded file, e.g.
  #   --config.backbones.densenet121.pretrained=/weights/densenet121.tv_in1k.safetensors
  # (timm's densenet121.tv_in1k, densenet169.tv_in1k, legacy_seresnext101_32x4d.in1k model.safetensors, or the
  # torchvision / Cadene .pth files: docs/models.md, "Pretrained weights"). Without it a run on real data says
  # loudly that it trains from scratch. The public code normalises every channel with mean 0.456, std 0.224
  # (2DCNN dataset.py, albumentations.Normalize): "seed003", applied with or without pretrained weights.
  c.backbones = ConfigDict({name: ConfigDict({"name": name, "options": ConfigDict(), "pretrained": None,
                                              "pretrained_preprocessing": "seed003", "first_conv_rule": "mean"})
                            for name in c.experiment.backbones})

  c.cnn = _cnn(a.neighbours)
  c.seq1 = _sequence("seq_gru_1")
  c.seq2 = _sequence("seq_gru_2")

  # Evaluation of the combined stages (fold means, ensemble): seed 000's statistics as in every report.
  c.eval = ConfigDict({"threshold": 0.5, "n_boot": 500, "bootstrap_seed": 0, "figures": True})

  if smoke:
    # synthetic_ich/tiny: 12 training studies (6 per fold), 8 test studies. Three small_cnn widths stand in for
    # the three backbones (a real SE-ResNeXt101 takes minutes to compile on a CPU); 2 folds per stage.
    c.dataset.config = "tiny"
    c.experiment.cnn_folds = 2
    c.experiment.sequence_folds = 2
    c.experiment.external = ""         # tests name a CQ500 fixture build here
    for name, widths in zip(c.experiment.backbones, ((8, 16), (8, 12, 16), (12, 16))):
      c.backbones[name] = ConfigDict({"name": "small_cnn", "options": ConfigDict({"widths": widths})})
    c.cnn.data.image_size = 64
    c.cnn.train.batch_size = 8
    c.cnn.train.epochs = 1
    c.cnn.train.log_every = 2
    c.cnn.train.checkpoint_every = 100
    c.cnn.train.progress = False
    c.cnn.eval.batch_size = 16
    for key, model in (("seq1", "seq_gru_1"), ("seq2", "seq_gru_2")):
      smoke_seq = sequence.get_config(f"{model},smoke")
      c[key].data = smoke_seq.data
      c[key].model = smoke_seq.model
      c[key].train.batch_size = 8
      c[key].train.epochs = 2
      c[key].train.log_every = 1
      c[key].train.progress = False
      c[key].eval = smoke_seq.eval
    c.eval.n_boot = 50
    c.eval.figures = False
  return c
