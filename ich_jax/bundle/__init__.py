"""Model bundles: trained models as one self-contained folder, and the engine that runs them on a study.

  python launch.py --config C --workdir W --mode export [--out DIR]          # write (ich_jax.bundle.export)
  python -m ich_jax.bundle export --run W/STAGE --out DIR                    # a run folder, by its config.json
  python -m ich_jax.bundle export --run W --out DIR                          # an experiment: its final stage
  python -m ich_jax.bundle combine --out DIR --average B1 B2 [--mask B3]     # ensembles of bundles
  python -m ich_jax.bundle verify DIR                                        # hashes, members, provenance

A bundle is a folder:

  manifest.json          what the members are and how they combine (below), the label order, the operating
                         threshold, the format version, the SHA-256 of every file a member loads (`files`),
                         the software that wrote the bundle (`provenance`, below), and a hash of the manifest's
                         own content (`hash`: catches an accidental edit)
  params/<member>.npz    one member's variables as flat numpy arrays, keyed by their nnx state path
                         ("params/blocks/0/conv/kernel/value", "model_state/blocks/0/norm/mean/value", ...);
                         PRNG keys are stored as their key data (manifest: `key_arrays`, path → impl)

Why numpy rather than Orbax: a bundle leaves the lab, so it should be
readable without the training stack's checkpoint machinery (no async
writers, no tensorstore layout), be a handful of plain files whose hashes a
manifest can list, and load into any process with `np.load`. Orbax stays the
training checkpoint format (ich_jax.train.checkpoint).

A member (manifest `members`, in dependency order: a member's inputs come before it):

  name        unique within the bundle
  role        "classifier" (task multilabel_classification: slice → six probabilities, Grad-CAM),
              "segmentation" (task segmentation: slice → blood maps, `pred_mask`),
              "sequence" (task sequence_classification: seed 003's seq_gru_1/2 over the whole series),
              "ensemble_weights" (task ensemble: seed 000's weight model over segmentation members' maps),
              "detector" (task detection: seed 001's Mask R-CNN: slice → boxes, scores and classes, a label map
              of its instance masks as `pred_mask`, six probabilities),
              "mean" (no model, no params file: the mean of its inputs' probabilities, features and maps,
              as ich_jax.data.stacking.mean_over_models averages exports: seed 003's mean over fold models
              and over backbones; it counts as its inputs' role, which must be one. Format version 2; a
              bundle without one is written as version 1)
  model       {"name", "num_classes", "in_channels", "options"}: `ich_jax.models.build` arguments (mean: null)
  task        the task config (`ich_jax.train.tasks.build`): how the model is called and what it predicts
  data        slice-input members only: how a slice becomes its input (`ich_jax.data.pipeline`): image_size,
              recipe [(slice offset, level, width), ...], intensity, clip_range, clip_out_range
  inputs      sequence / ensemble_weights / mean members: the names of the members whose outputs they read, in
              the order their training exports were listed (`config.dataset.exports`; a mean: its parts)
  params      the member's .npz file (mean: null)
  source      where it came from (workdir, step, dataset), and `provenance`: its run's record (the run's
              config.json, ich_jax.train.config_record: the software that trained it, the dataset's name,
              builder config, version and folder, the splits trained, evaluated and validated on, and the
              config hash). Never read to predict

`outputs` says how members make the bundle's answer:

  probabilities  {"combine": "mean", "members": [names]}: per-slice probabilities, the mean over the members
                 (one member: its own); a study's probability is its most suspicious slice's (seeds 000, 003)
  mask           the member whose `pred_mask` is the predicted blood mask (segmentation, ensemble_weights or
                 detector), or null
  gradcam        the classifier member whose Grad-CAM the overview shows, or null
  detections     the detector member whose boxes the report lists, or null (absent in bundles written before
                 detectors: read as null). Its classes (groups of subtypes) are its task's `classes`; its boxes
                 are on its input (`data.image_size`²), which the predictor maps back to the stored slice

`provenance` (as MONAI bundles' metadata.json): {"software": ich-jax's version and git commit, Python's and the
libraries' versions when the bundle was written (`ich_jax.provenance.software`)}. Each member's
`source.provenance` says how that member was trained; `verify` prints both and a prediction's report.json copies
them. The manifest's `hash` covers them. A bundle written before they were recorded has neither and still loads
(`format.provenance_of` reads them as None).

So a seed 003 cascade of single runs is three members (CNN → seq_gru_1 → seq_gru_2, probabilities from the
last); the K-fold cascade exported from its root is, per backbone, K CNNs → their mean → J seq_gru_1 → their
mean → J seq_gru_2 → their mean, and a mean over the backbones (what the cascade's evaluation computes); seed
000's ensemble is U-Nets plus the weight model (probabilities and mask from it), and averaged backbones
or a classifier beside a segmentation model are `combine` of single bundles.

Loading (`load`) needs only ich_jax: models are rebuilt by name, variables filled from the arrays
(every path and shape must match), hashes checked first and again on the bytes loaded. A bundle that
was edited, truncated, is missing a file, or loads a file its manifest does not list is refused with
the file that differs. A bundle's identity is the SHA-256 of manifest.json (`manifest_sha256`; it
covers every file through their listed hashes): `verify` prints it, prediction reports record it, and
`load(..., expected_sha256=...)` (predict's `--expect-sha256`) refuses any other bundle, even one whose
manifest was edited and its `hash` recomputed.

The package's modules, one job each: `format` (the folder: write, read_manifest, the hashes), `members`
(one member loaded, its jitted calls), `engine` (`Bundle`, `load`: a study through every member),
`combine` (ensembles of bundles), `export` (a run folder's bundle), `__main__` (the command line).
"""
from ich_jax.bundle.combine import combine
from ich_jax.bundle.engine import Bundle, load
from ich_jax.bundle.format import BundleError, manifest_sha256, read_manifest, write

__all__ = ["Bundle", "BundleError", "combine", "load", "manifest_sha256", "read_manifest", "write"]
