"""Seed 002's single and dual autoencoders (S2) on 100x100 grayscale faces.

Seed 002 (Keras, after Solovyeva & Abdullah, J. Imaging 8(9):250, 2022)
publishes only shapes and parameter counts; everything here follows Keras
semantics: ``padding="valid"`` unless stated, ReLU on hidden layers, sigmoid
outputs, Glorot-uniform kernels, zero biases, ``MaxPool2D()`` 2x2/2, and
transposed convolutions with ``transpose_kernel=True`` (exactly TensorFlow's
``conv2d_transpose``, kernels in Keras's layout). With ``separable=True``
every ``Conv2D`` becomes a Keras ``SeparableConv2D`` (3x3 depthwise without
bias, then 1x1 pointwise with bias); transposed convolutions stay regular.

**Second stage** (known exactly; SPEC.md): conv3x3 1->25, conv3x3 25->25,
conv3x3 25->50 (all valid: 100 -> 94), maxpool -> 47x47x50; transposed conv
3x3/2 50->50 (95), 3x3 50->25 (97), 4x4 25->1 (100), sigmoid. 51,426
parameters; 36,685 separable. Both match exactly.

**Dual AE** = single AE, then the second stage on its 100x100x1 sigmoid
output. The seed's totals say so exactly: 87,812 - 36,386 = 51,426 and
52,445 - 15,760 = 36,685, i.e. the dual AE adds the second stage and nothing
else.

**Single AE** (reconstructed; seed 002 gives only 100x100x1 -> 23x23x25 and
36,386 / 15,760 parameters): conv3x3 1->25 (98), conv3x3 25->50 (96),
maxpool (48), conv3x3 50->25 (46), maxpool -> 23x23x25; transposed conv
3x3/2 25->25 (47), 3x3/2 25->25 (95), 6x6 25->1 (100), sigmoid. It has
35,026 parameters (-1,360, -3.7%) and 15,510 separable (-250, -1.6%). No
all-3x3 encoder of 25/50-channel convs reproduces the seed's
regular-minus-separable gap (20,626) exactly; ours is 19,516, the nearest a
natural layout reaches, so the seed's unpublished layers must differ in
widths or kernels.

**Dual AE with skip connections** (reconstructed; the seed says the first
encoder's features are "upscaled/downscaled or increased/decreased in
dimensions" to match "the respective layer" of the second encoder and added,
ResNet style). The i-th conv output of the first encoder goes through a 1x1
conv (separable in the separable variant) to the channels of the i-th conv
output of the second encoder, is resized bilinearly where the spatial size
differs (46 -> 94 for the third), and is added after that layer's ReLU. The
adapters add 3,225 parameters (3,325 separable) against the seed's 3,676
(3,786); the seed's separable count being the *larger* one can only come
from 1x1 (or single-output) separable layers, which supports 1x1 adapters.
Totals: 89,677 (seed 91,488, -1,811) and 55,520 (seed 56,231, -711).

The layouts are exact for any input whose height and width are multiples of
4 (at 100x100 they give the shapes above).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Keras's default kernel initializer; biases start at zero in both.
_KERAS_INIT = nn.initializers.glorot_uniform()


class SeparableConv(nn.Module):
  """Keras ``SeparableConv2D`` with ``depth_multiplier=1``.

  A bias-free depthwise ``k x k`` convolution, then a pointwise 1x1
  convolution with bias: ``k*k*C_in + C_in*C_out + C_out`` parameters.

  Attributes:
    features: output channels.
    kernel_size: depthwise kernel size.
    padding: ``"VALID"`` or ``"SAME"``.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int = 3
  padding: str = "VALID"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """Applies the depthwise then the pointwise convolution to NHWC ``x``."""
    channels = x.shape[-1]
    k = (self.kernel_size, self.kernel_size)
    x = nn.Conv(channels, k, padding=self.padding, feature_group_count=channels, use_bias=False,
                kernel_init=_KERAS_INIT, dtype=self.dtype, name="depthwise")(x)
    return nn.Conv(self.features, (1, 1), kernel_init=_KERAS_INIT, dtype=self.dtype,
                   name="pointwise")(x)


def _conv(features: int, kernel_size: int, *, separable: bool, dtype: Any) -> nn.Module:
  """A Keras ``Conv2D`` (valid padding) or its separable counterpart."""
  if separable:
    return SeparableConv(features, kernel_size, dtype=dtype)
  return nn.Conv(features, (kernel_size, kernel_size), padding="VALID", kernel_init=_KERAS_INIT,
                 dtype=dtype)


def _conv_t(features: int, kernel_size: int, stride: int, *, dtype: Any) -> nn.Module:
  """A Keras ``Conv2DTranspose`` with valid padding: size ``(n - 1) * stride + kernel``."""
  return nn.ConvTranspose(features, (kernel_size, kernel_size), strides=(stride, stride),
                          padding="VALID", transpose_kernel=True, kernel_init=_KERAS_INIT,
                          dtype=dtype)


def _pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _check_size(images, name: str):
  height, width = images.shape[1:3]
  if height % 4 or width % 4 or min(height, width) < 20:
    raise ValueError(
        f"{name} needs height and width that are multiples of 4 and at least 20 "
        f"(100x100 in seed 002); got {height}x{width}."
    )


class SingleAE(nn.Module):
  """Seed 002's single autoencoder (reconstructed; see the module docstring).

  Attributes:
    encoder_features: channels of the three encoder convs (the last is the
      bottleneck's: 23x23x25 at 100x100).
    decoder_features: channels of the two stride-2 transposed convs.
    separable: Keras ``SeparableConv2D`` for the convs.
    out_channels: channels of the output image.
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: unused (no BatchNorm); accepted so that the trainer can
      pass it to any model.
  """

  encoder_features: Sequence[int] = (25, 50, 25)
  decoder_features: Sequence[int] = (25, 25)
  separable: bool = False
  out_channels: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def run(self, x):
    """The network on ``x`` in [0, 1], in ``self.dtype``.

    Args:
      x: ``[B, H, W, C]`` images in [0, 1].

    Returns:
      ``(reconstruction, features)``: the sigmoid output and the outputs of
      the three encoder convs (after ReLU), which the skip-connected dual
      AE adds into its second encoder.
    """
    conv = functools.partial(_conv, separable=self.separable, dtype=self.dtype)
    conv_t = functools.partial(_conv_t, dtype=self.dtype)
    f1, f2, f3 = self.encoder_features
    e1 = nn.relu(conv(f1, 3)(x))
    e2 = nn.relu(conv(f2, 3)(e1))
    e3 = nn.relu(conv(f3, 3)(_pool(e2)))
    z = _pool(e3)
    self.sow("intermediates", "latent", z)
    d1, d2 = self.decoder_features
    y = nn.relu(conv_t(d1, 3, 2)(z))
    y = nn.relu(conv_t(d2, 3, 2)(y))
    y = nn.sigmoid(conv_t(self.out_channels, 6, 1)(y))
    return y, (e1, e2, e3)

  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, H, W, C]`` images in [0, 1] to reconstructions in [0, 1].

    Args:
      images: ``[B, H, W, C]``; H and W multiples of 4 (100x100 in the seed).
      train: unused (no BatchNorm or sampling); kept for the common interface.

    Returns:
      ``[B, H, W, out_channels]`` float32 reconstructions in [0, 1].
    """
    del train
    _check_size(images, type(self).__name__)
    y, _ = self.run(images.astype(self.dtype))
    return y.astype(jnp.float32)


class SecondStage(nn.Module):
  """Seed 002's second autoencoder, optionally with additive skip inputs.

  Attributes:
    encoder_features: channels of the three valid 3x3 convs (25, 25, 50).
    decoder_features: channels of the 3x3/2 and 3x3 transposed convs (50, 25).
    separable: Keras ``SeparableConv2D`` for the convs and skip adapters.
    out_channels: channels of the output image.
    dtype: computation dtype.
  """

  encoder_features: Sequence[int] = (25, 25, 50)
  decoder_features: Sequence[int] = (50, 25)
  separable: bool = False
  out_channels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skips: Sequence[jax.Array] | None = None):
    """Runs the second autoencoder.

    Args:
      x: ``[B, H, W, C]`` first-stage output.
      skips: ``None``, or one first-encoder feature map per encoder conv; each
        is projected by a 1x1 conv to that conv's channels, resized to its
        spatial size where they differ, and added after its ReLU.

    Returns:
      The sigmoid reconstruction, in ``self.dtype``.
    """
    conv = functools.partial(_conv, separable=self.separable, dtype=self.dtype)
    if skips is not None and len(skips) != len(self.encoder_features):
      raise ValueError(f"SecondStage takes {len(self.encoder_features)} skips, got {len(skips)}.")
    for i, features in enumerate(self.encoder_features):
      x = nn.relu(conv(features, 3)(x))
      if skips is not None:
        skip = conv(features, 1)(skips[i])
        if skip.shape[1:3] != x.shape[1:3]:
          skip = jax.image.resize(skip, (*skip.shape[:1], *x.shape[1:3], features), "bilinear")
        x = x + skip
    z = _pool(x)
    self.sow("intermediates", "latent", z)
    d1, d2 = self.decoder_features
    y = nn.relu(_conv_t(d1, 3, 2, dtype=self.dtype)(z))
    y = nn.relu(_conv_t(d2, 3, 1, dtype=self.dtype)(y))
    return nn.sigmoid(_conv_t(self.out_channels, 4, 1, dtype=self.dtype)(y))


class DualAE(nn.Module):
  """Seed 002's dual autoencoder: the single AE, then the second stage.

  Attributes:
    skip: add the first encoder's features into the second encoder (the
      seed's "dual autoencoder with skip connections").
    separable: Keras ``SeparableConv2D`` for every conv (transposed convs
      stay regular).
    first_encoder_features: ``SingleAE.encoder_features``.
    first_decoder_features: ``SingleAE.decoder_features``.
    second_encoder_features: ``SecondStage.encoder_features``.
    second_decoder_features: ``SecondStage.decoder_features``.
    out_channels: channels of the output image (and of the intermediate one).
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: unused (no BatchNorm); accepted so that the trainer can
      pass it to any model.
  """

  skip: bool = False
  separable: bool = False
  first_encoder_features: Sequence[int] = (25, 50, 25)
  first_decoder_features: Sequence[int] = (25, 25)
  second_encoder_features: Sequence[int] = (25, 25, 50)
  second_decoder_features: Sequence[int] = (50, 25)
  out_channels: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, H, W, C]`` images in [0, 1] to reconstructions in [0, 1].

    Args:
      images: ``[B, H, W, C]``; H and W multiples of 4 (100x100 in the seed).
      train: unused (no BatchNorm or sampling); kept for the common interface.

    Returns:
      ``[B, H, W, out_channels]`` float32 reconstructions in [0, 1]. The
      first stage's output is sown as ``intermediates/first_output``.
    """
    del train
    _check_size(images, type(self).__name__)
    first = SingleAE(self.first_encoder_features, self.first_decoder_features,
                     separable=self.separable, out_channels=self.out_channels, dtype=self.dtype,
                     name="first")
    y, features = first.run(images.astype(self.dtype))
    self.sow("intermediates", "first_output", y)
    second = SecondStage(self.second_encoder_features, self.second_decoder_features,
                         separable=self.separable, out_channels=self.out_channels,
                         dtype=self.dtype, name="second")
    return second(y, features if self.skip else None).astype(jnp.float32)


SingleAE_sep = functools.partial(SingleAE, separable=True)
DualAE_sep = functools.partial(DualAE, separable=True)
DualSkipAE = functools.partial(DualAE, skip=True)
DualSkipAE_sep = functools.partial(DualAE, skip=True, separable=True)
# Used for testing only: the skip-connected graph (both conv kinds reachable
# through `separable`) with a few channels.
TinyDualSkipAE = functools.partial(
    DualAE, skip=True, first_encoder_features=(4, 8, 4), first_decoder_features=(4, 4),
    second_encoder_features=(4, 4, 8), second_decoder_features=(8, 4),
)
