"""Seed 000 §2.1 (Table 2): DenseNet121, InceptionResNetV2, MobileNetV2 and VGG19 on weak vs strong annotation.

  python launch.py --config configs/strong_vs_weak.py --workdir runs/strong_vs_weak       # phantoms (GPUs)
  python launch.py --config configs/strong_vs_weak.py:smoke --workdir /tmp/svw           # CPU minutes
  python launch.py --config configs/strong_vs_weak.py --workdir runs/svw_physionet \\
      --config.dataset.name=physionet_ct_ich --config.dataset.config=slices256 \\
      --config.dataset.manual_dir=/data/ct-ich --config.dataset.train_split=fold0+fold1+fold2+fold3 \\
      --config.dataset.eval_split=fold4

Weak: the slice classification loss; strong: plus the saliency-supervision
loss against the masks (stages and folders: ich_jax/experiments/strong_vs_weak.py).
The strong arm needs masks: synthetic_ich and physionet_ct_ich have them,
rsna_ich does not (`--config.experiment.annotations="('weak',)"` trains the
weak arm alone there).

`smoke`: synthetic_ich/tiny, four small_cnn widths standing in for the four
networks (the real ones take minutes to compile on a CPU), a few steps: the
same code path in CPU minutes.
"""
from ml_collections import ConfigDict

from configs.common import parse_arg
from ich_jax.data import config_defaults, windows


def get_config(arg: str | None = None) -> ConfigDict:
  smoke = parse_arg(arg, config="configs/strong_vs_weak.py", smoke=False).smoke
  c = ConfigDict()
  c.seed = 0

  c.dataset = ConfigDict()
  c.dataset.name = "synthetic_ich"     # masks on every slice: the strongly annotated set
  c.dataset.config = "small256"
  c.dataset.data_dir = "data/tfds"
  c.dataset.manual_dir = ""
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"

  c.experiment = ConfigDict()
  c.experiment.name = "strong_vs_weak"
  # Seed 000 §2.1.5: "DenseNet121, InceptionResNetV2, MobileNetV2, and VGG19 were used".
  c.experiment.backbones = ("densenet121", "inception_resnet_v2", "mobilenet_v2", "vgg19")
  c.experiment.annotations = ("weak", "strong")
  c.experiment.only = ()
  # Seed 000 §2.1.3: the models are compared on external test sets (DUMC, private, and Qure.ai's CQ500, "three
  # neuroradiologists ... majority vote"). Every run is also scored on these ("name[/builder config]:split",
  # comma-separated; ich_jax.data.external) in the stage `external`. On the phantoms: 300 other patients; on
  # real data: "cq500:test" with its download in external_manual_dir.cq500.
  c.experiment.external = "synthetic_ich/small_dev256:test"
  c.experiment.external_manual_dir = ConfigDict({"cq500": "", "physionet_ct_ich": "", "rsna_ich": ""})
  # Per backbone: seed 000's code is Keras, so its four are keras.applications' networks (DenseNet121 and
  # MobileNetV2 as options.variant "keras": Keras's padding and BatchNorm constants). The paper does not say
  # whether they start from ImageNet weights, and its 4-channel input is not what Keras's ImageNet weights
  # take, so `pretrained` is None (from scratch, said loudly on real data). To fine-tune, set it to the
  # keras.applications .h5 file (or timm's safetensors, with variant "torchvision") and its preprocessing:
  #   --config.backbones.vgg19.pretrained=/weights/vgg19_weights_tf_dim_ordering_tf_kernels.h5
  #   --config.backbones.vgg19.pretrained_preprocessing=keras_caffe
  # (densenet121: keras_torch; inception_resnet_v2, mobilenet_v2: keras_tf). The first convolution's RGB
  # kernel becomes 4 channels by rule "mean" (docs/models.md, "Pretrained weights").
  keras = {"densenet121": {"variant": "keras"}, "mobilenet_v2": {"variant": "keras"}}
  c.backbones = ConfigDict({name: ConfigDict({"name": name, "options": ConfigDict(keras.get(name, {})),
                                              "pretrained": None, "pretrained_preprocessing": None,
                                              "first_conv_rule": "mean"})
                            for name in c.experiment.backbones})

  # One run (both annotations; the strong arm adds c.strong).
  r = c.run = ConfigDict()
  r.data = config_defaults.default_data_config()
  r.data.image_size = 256              # the paper states no input size
  # Seed 000 §2.1.4: "a four-channel input image": stroke 40/40, brain 40/80, bone 500/3000 and the brain
  # window after skull stripping (the paper's in-house 3D U-Net is not public: the classical mask of
  # ich_jax/data/skull_strip.py), the weighted ensemble's input too (§2.1.5: "the same input image").
  r.data.recipe = windows.SEED000_4WINDOW
  r.data.augment.enabled = False       # seed 000 §2.1 names no augmentation
  # Seed 000 §2.1.2: "the same number of slices with and without hemorrhage (n = 6,500 each)", and among the
  # slices with blood "the same number of slices as those of IPH, IVH, SDH, EDH, and SAH (n = 1,300)",
  # drawn once. A split with fewer lesion slices draws some twice.
  s = r.data.sampling
  s.mode = "balanced"
  s.lesion = "any"
  s.balance_subtypes = True
  s.num_lesion = 6500
  s.redraw_each_epoch = False

  r.model = ConfigDict({"name": "", "options": ConfigDict()})
  r.task = ConfigDict()
  r.task.name = "multilabel_classification"
  # Seed 000 §2.1.1: slices labelled for "the presence/absence of a hemorrhage": a binary ICH classifier,
  # the "any" output; the five subtype outputs are not trained.
  r.task.label_weights = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
  r.task.saliency_loss_weight = 0.0    # weak; the strong runs take c.strong's
  r.task.saliency_class = "any"

  r.optimizer = ConfigDict()
  r.optimizer.name = "adam"            # seed 000 §2.2.2: Adam at 1e-4 (stated for its U-Nets; §2.1 states none)
  r.optimizer.learning_rate = 1e-4
  r.optimizer.schedule = "constant"
  r.optimizer.weight_decay = 0.0

  r.train = ConfigDict()
  r.train.batch_size = 32              # not in the paper
  r.train.epochs = 10                  # not in the paper; an epoch is the balanced set (2 × num_lesion slices)
  r.train.steps_per_epoch = 0          # counted from the balanced set when the run starts
  r.train.num_steps = 0
  r.train.log_every = 50
  r.train.checkpoint_every = 500
  r.train.keep_checkpoints = 2
  r.train.progress = True

  r.eval = ConfigDict()
  r.eval.batch_size = 64
  r.eval.threshold = 0.5               # seed 000 §2.1.5: "the threshold of 0.5"
  r.eval.n_boot = 500                  # seed 000 §2.1.5: "500 bootstrap replications" for 95% CIs
  r.eval.bootstrap_seed = 0
  r.eval.baseline = False
  r.eval.figures = True

  c.strong = ConfigDict()
  # Seed 000 §2.1.5 adds "the segmentation loss in addition to the classification loss", no weight given: 1.
  c.strong.saliency_loss_weight = 1.0

  if smoke:
    # synthetic_ich/tiny: 12 training studies, 22 slices with blood; 8 test studies.
    c.dataset.config = "tiny"
    c.experiment.external = ""         # tests name a CQ500 fixture build here
    for name, widths in zip(c.experiment.backbones, ((8, 16), (8, 12, 16), (12, 16), (8, 8, 16))):
      c.backbones[name] = ConfigDict({"name": "small_cnn", "options": ConfigDict({"widths": widths})})
    r.data.image_size = 64
    s.num_lesion = 0                   # every lesion slice once, as many normal ones
    r.train.batch_size = 8
    r.train.epochs = 1
    r.train.log_every = 2
    r.train.checkpoint_every = 100
    r.train.progress = False
    r.eval.batch_size = 16
    r.eval.n_boot = 50
    r.eval.figures = False
  return c
