"""Seed 001's autoencoders (S1, "Graz AE") on 64x64 RGB images.

Seed 001 publishes Keras listings; this module follows them layer for layer,
with Keras semantics:

* ``Conv2D``/``Conv2DTranspose`` with 3x3 kernels, ``padding="same"``, ReLU,
  Glorot-uniform kernels and zero biases (Keras defaults). Transposed
  convolutions use ``transpose_kernel=True``, so that they compute exactly
  what TensorFlow's ``conv2d_transpose`` computes (the gradient of the
  forward convolution) and their kernels have Keras's ``(k, k, out, in)``
  layout.
* ``BatchNormalization`` *after* each activation, with Keras's
  ``momentum=0.99`` and ``epsilon=1e-3``.
* ``MaxPool2D()`` is 2x2 with stride 2; ``UpSampling2D()`` is nearest x2.

Encoder: three conv-conv-pool (CCP) blocks with 32/64/128 filters
(64 -> 8x8x128). Dense network: ``Flatten``, ``Dense(bottleneck)`` (linear),
BN, then ``Dense(4096)`` (linear), BN, ``Reshape((8, 8, 64))`` and one of
three decoders:

* type 1: ``Conv2DTranspose`` stride 2 with 64/32/16 filters, each + BN;
* type 2: ``Conv2DTranspose`` stride 1 with 64/32/16 filters, each + BN +
  ``UpSampling2D``;
* type 3: per block a stride-2 and a stride-1 ``Conv2DTranspose`` with
  32/16/8 filters, each + BN;

and a final 3x3 ``Conv2D(3)`` with sigmoid.

The fully convolutional AE of the seed's discussion (its Figure 8 only) is
reconstructed as the same graph without the dense layers: CCP encoder with
32/48/64 filters (latent 8x8x64 = 4096 values), decoder type 1 with 32/16/8
filters, and a 1x1 output convolution.

Parameter counts: Flax's ``params`` collection holds what Keras calls the
trainable parameters (kernels, biases and BN's gamma/beta); BN's moving mean
and variance (Keras's non-trainable parameters) live in ``batch_stats``.
Seed 001's Table 1 counts trainable parameters: networks 1/2/3 with a 4096
bottleneck have 50,704,803 / 50,704,803 / 50,680,971, and ours match exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Keras's default kernel initializer; biases start at zero in both.
_KERAS_INIT = nn.initializers.glorot_uniform()
# Keras BatchNormalization defaults (Flax's epsilon default is 1e-5).
_KERAS_BN_MOMENTUM = 0.99
_KERAS_BN_EPSILON = 1e-3


def _upsample_nearest(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
  """Keras ``UpSampling2D(size=factor)`` (nearest neighbour) on NHWC."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _conv_t(features: int, *, strides: tuple[int, int], dtype: Any) -> nn.Module:
  """Keras ``Conv2DTranspose(features, (3, 3), strides, padding="same")``: size ``n * stride``."""
  return nn.ConvTranspose(features, (3, 3), strides=strides, padding="SAME", transpose_kernel=True,
                          kernel_init=_KERAS_INIT, dtype=dtype)


class GrazAE(nn.Module):
  """Seed 001's dense-bottleneck AE (decoder types 1-3) and fully conv AE.

  Attributes:
    encoder_features: filters of the CCP blocks (two 3x3 convs, BN after each,
      then 2x2 max pooling).
    bottleneck: units of the dense bottleneck (1000: the seed's final model,
      section 3.1.2; its sweep in 3.1.1 varies it); ``None`` removes the
      dense layers (fully convolutional AE).
    decoder_type: 1, 2 or 3, as in seed 001's listings.
    decoder_features: filters of the decoder's three blocks.
    reshape_features: channels of the decoder's ``Reshape`` after
      ``Dense(h * w * reshape_features)`` (64 in the seed: 8x8x64 = 4096).
    out_kernel: kernel size of the output convolution (3; 1 for the fully
      convolutional AE).
    out_channels: channels of the output image.
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: axis to average BatchNorm statistics over under
      ``pmap``/``shard_map``; ``None`` under ``jit`` with shardings.
  """

  encoder_features: Sequence[int] = (32, 64, 128)
  bottleneck: int | None = 1000
  decoder_type: int = 1
  decoder_features: Sequence[int] = (64, 32, 16)
  reshape_features: int = 64
  out_kernel: int = 3
  out_channels: int = 3
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  def _check(self, images):
    if self.decoder_type not in (1, 2, 3):
      raise ValueError(f"config.model.decoder_type={self.decoder_type!r}; allowed: 1, 2, 3.")
    if len(self.encoder_features) != len(self.decoder_features):
      raise ValueError(
          "GrazAE needs as many decoder blocks as encoder blocks to restore the size; got "
          f"encoder_features={tuple(self.encoder_features)}, "
          f"decoder_features={tuple(self.decoder_features)}."
      )
    factor = 2 ** len(self.encoder_features)
    height, width = images.shape[1:3]
    if height % factor or width % factor:
      raise ValueError(
          f"GrazAE needs height and width divisible by {factor}; got {height}x{width}."
      )

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, H, W, C]`` images in [0, 1] to reconstructions in [0, 1].

    Args:
      images: ``[B, H, W, C]`` in [0, 1]; H and W divisible by 8 with the
        default three blocks.
      train: batch statistics (and their running averages) in BatchNorm.

    Returns:
      ``[B, H, W, out_channels]`` float32 reconstructions in [0, 1].
    """
    self._check(images)
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=_KERAS_BN_MOMENTUM,
        epsilon=_KERAS_BN_EPSILON,
        axis_name=self.bn_axis_name,
        dtype=self.dtype,
    )
    conv = functools.partial(nn.Conv, padding="SAME", kernel_init=_KERAS_INIT, dtype=self.dtype)
    conv_t = functools.partial(_conv_t, dtype=self.dtype)
    dense = functools.partial(nn.Dense, kernel_init=_KERAS_INIT, dtype=self.dtype)

    x = images.astype(self.dtype)
    # Encoder: conv-BN-conv-BN-pool blocks (activation before BN, as listed).
    for features in self.encoder_features:
      x = norm()(nn.relu(conv(features, (3, 3))(x)))
      x = norm()(nn.relu(conv(features, (3, 3))(x)))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))

    if self.bottleneck is not None:
      batch, height, width, _ = x.shape
      x = norm()(dense(self.bottleneck)(x.reshape(batch, -1)))
      self.sow("intermediates", "latent", x)
      x = norm()(dense(height * width * self.reshape_features)(x))
      x = x.reshape(batch, height, width, self.reshape_features)
    else:
      self.sow("intermediates", "latent", x)

    for features in self.decoder_features:
      if self.decoder_type == 1:
        x = norm()(nn.relu(conv_t(features, strides=(2, 2))(x)))
      elif self.decoder_type == 2:
        x = norm()(nn.relu(conv_t(features, strides=(1, 1))(x)))
        x = _upsample_nearest(x)
      else:
        x = norm()(nn.relu(conv_t(features, strides=(2, 2))(x)))
        x = norm()(nn.relu(conv_t(features, strides=(1, 1))(x)))

    k = (self.out_kernel, self.out_kernel)
    y = nn.sigmoid(conv(self.out_channels, k)(x))
    return y.astype(jnp.float32)


# Seed 001's Table 1: networks 1-3 (decoder types 1-3) with a 4096 bottleneck.
GrazAE_net1 = functools.partial(GrazAE, bottleneck=4096, decoder_type=1)
GrazAE_net2 = functools.partial(GrazAE, bottleneck=4096, decoder_type=2)
GrazAE_net3 = functools.partial(
    GrazAE, bottleneck=4096, decoder_type=3, decoder_features=(32, 16, 8)
)
# Seed 001's fully convolutional AE (section 4, Figure 8; reconstructed).
GrazFCAE = functools.partial(
    GrazAE,
    encoder_features=(32, 48, 64),
    bottleneck=None,
    decoder_type=1,
    decoder_features=(32, 16, 8),
    out_kernel=1,
)
# Used for testing only: the same graphs with a handful of channels.
TinyGrazAE = functools.partial(
    GrazAE, encoder_features=(4, 8, 8), bottleneck=16, decoder_features=(8, 4, 4),
    reshape_features=4,
)
TinyGrazFCAE = functools.partial(
    GrazFCAE, encoder_features=(4, 6, 8), decoder_features=(4, 4, 2)
)
