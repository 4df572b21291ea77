"""Seed 000's Inception U-Net (§2.2.2, Supplementary Fig. S3) and its subtype-pretrainable encoder.

All five ensemble base models are "2D U-net with the Inception module"; Model 2's
down-sampling path is first trained on hemorrhage-subtype labels and then
loaded into the U-Net. `InceptionEncoder` is that path; `inception_unet_encoder`
wraps it in a classification head for the pre-training, `inception_unet` in the
decoder, and `load_encoder` carries the weights across.

The supplementary figure is not in our copy of the paper, so the module's
layout is chosen here and said where it is chosen.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ich_jax.models import register
from ich_jax.models.classifier import ConvBN


class InceptionBlock(nnx.Module):
  """Four parallel branches concatenated to `cout` channels (a quarter each).

  1×1; 1×1 → 3×3; 1×1 → 3×3 → 3×3 (the 5×5 branch factorised as in
  Inception-v2/v3); 3×3 max pool → 1×1. Each conv is followed by BatchNorm and
  ReLU (the shared `classifier.ConvBN`, He-initialised). Seed 000 names the Inception module without its layout; this is the
  GoogLeNet module with the factorised 5×5 and reductions of half the branch width.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype=None):
    if cout % 4:
      raise ValueError(f"inception block: output width {cout} is not divisible by its 4 branches")
    b = cout // 4
    r = max(b // 2, 1)
    self.b1 = ConvBN(cin, b, (1, 1), rngs=rngs, dtype=dtype)
    self.b3 = nnx.List([ConvBN(cin, r, (1, 1), rngs=rngs, dtype=dtype), ConvBN(r, b, (3, 3), rngs=rngs, dtype=dtype)])
    self.b5 = nnx.List([ConvBN(cin, r, (1, 1), rngs=rngs, dtype=dtype), ConvBN(r, b, (3, 3), rngs=rngs, dtype=dtype),
                        ConvBN(b, b, (3, 3), rngs=rngs, dtype=dtype)])
    self.bpool = ConvBN(cin, b, (1, 1), rngs=rngs, dtype=dtype)

  def __call__(self, x):
    outs = [self.b1(x)]
    for branch in (self.b3, self.b5):
      y = x
      for layer in branch:
        y = layer(y)
      outs.append(y)
    outs.append(self.bpool(nnx.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")))
    return jnp.concatenate(outs, axis=-1)


def level_widths(width: int, depth: int) -> list[int]:
  return [width * 2 ** i for i in range(depth + 1)]


class InceptionEncoder(nnx.Module):
  """The U-Net's down-sampling path: an Inception block per level, 2×2 max pooling between levels.

  Returns the skip features (finest first) and the bottom feature map.
  """

  def __init__(self, in_channels: int, *, width: int, depth: int, rngs: nnx.Rngs, dtype=None):
    widths = level_widths(width, depth)
    self.depth = depth
    self.widths = widths
    self.blocks = nnx.List([InceptionBlock(cin, cout, rngs=rngs, dtype=dtype)
                            for cin, cout in zip([in_channels] + widths[:-1], widths)])

  def __call__(self, x) -> tuple[list[jax.Array], jax.Array]:
    _, h, w, _ = x.shape
    if h % 2 ** self.depth or w % 2 ** self.depth:
      raise ValueError(f"inception encoder: input {h}×{w} is not a multiple of {2 ** self.depth} "
                       f"({self.depth} 2×2 poolings)")
    skips = []
    for block in self.blocks[:-1]:
      x = block(x)
      skips.append(x)
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return skips, self.blocks[-1](x)


# Seed 000 gives neither widths nor depth. Four poolings as in every U-Net of
# the seeds; 32 channels at full resolution keeps a 512² slice trainable.
_WIDTH, _DEPTH = 32, 4


@register("inception_unet")
class InceptionUNet(nnx.Module):
  """Inception encoder, then per level: 2×2 transposed conv, concatenation with the skip, Inception block.

  Returns per-pixel logits [B, H, W, num_classes] (sigmoid in the task; seed 000
  trains the base models with a Dice loss).
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, width: int = _WIDTH,
               depth: int = _DEPTH, dtype=None):
    self.encoder = InceptionEncoder(in_channels, width=width, depth=depth, rngs=rngs, dtype=dtype)
    widths = self.encoder.widths
    self.up = nnx.List([nnx.ConvTranspose(cout, cout // 2, (2, 2), strides=(2, 2), dtype=dtype, rngs=rngs)
                        for cout in reversed(widths[1:])])
    self.up_blocks = nnx.List([InceptionBlock(cout, cout // 2, rngs=rngs, dtype=dtype)
                               for cout in reversed(widths[1:])])
    self.out = nnx.Conv(width, num_classes, (1, 1), dtype=dtype, rngs=rngs)

  def load_pretrained(self, source: nnx.Module) -> None:
    """The trainer's hook for `config.model.init_from` (seed 000 Model 2): the encoder of a subtype-pretrained
    `inception_unet_encoder` run."""
    if not isinstance(source, InceptionEncoderClassifier):
      raise ValueError(f"inception_unet: init_from must be an inception_unet_encoder run, got a "
                       f"{type(source).__name__}")
    load_encoder(self, source)

  def __call__(self, x):
    skips, x = self.encoder(x)
    for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
      x = block(jnp.concatenate([skip, up(x)], axis=-1))
    return self.out(x)


@register("inception_unet_encoder")
class InceptionEncoderClassifier(nnx.Module):
  """Seed 000 Model 2's pre-training network: the U-Net's encoder under a subtype-classification head.

  Global average and max pooling of the bottom feature map, then a linear layer
  to `num_classes` logits (the six RSNA labels by default through the trainer).
  Trains with the multilabel classification task; `load_encoder` moves the
  trained encoder into an `inception_unet` built with the same width, depth and
  in_channels.
  """

  def __init__(self, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, width: int = _WIDTH,
               depth: int = _DEPTH, dtype=None):
    self.encoder = InceptionEncoder(in_channels, width=width, depth=depth, rngs=rngs, dtype=dtype)
    self.num_features = 2 * self.encoder.widths[-1]
    self.head = nnx.Linear(self.num_features, num_classes, dtype=dtype, rngs=rngs)

  def features_map(self, x):
    """Bottom feature map [B, h, w, C] (Grad-CAM, saliency loss)."""
    return self.encoder(x)[1]

  def pooled(self, fmap):
    return jnp.concatenate([fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))], axis=-1)

  def classify(self, fmap):
    return self.head(self.pooled(fmap))

  def __call__(self, x):
    return self.classify(self.features_map(x))


def load_encoder(unet: InceptionUNet, pretrained: InceptionEncoderClassifier) -> None:
  """Copies the pre-trained encoder's parameters and BatchNorm statistics into `unet` (in place).

  Seed 000 §2.2.2, Model 2: "down-sampling layers of U-net were pre-trained
  using hemorrhage subtype labeling". The decoder keeps its initialisation.
  """
  source = nnx.state(pretrained.encoder, (nnx.Param, nnx.BatchStat))
  target = nnx.state(unet.encoder, (nnx.Param, nnx.BatchStat))
  src_shapes = {k: v.shape for k, v in nnx.to_flat_state(source)}
  dst_shapes = {k: v.shape for k, v in nnx.to_flat_state(target)}
  if src_shapes != dst_shapes:
    diff = sorted(set(src_shapes.items()) ^ set(dst_shapes.items()))[:3]
    raise ValueError(f"load_encoder: the pre-trained encoder does not match the U-Net's (width, depth and "
                     f"in_channels must agree); first differing entries: {diff}")
  nnx.update(unet.encoder, source)
