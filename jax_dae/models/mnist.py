"""Seed 003's MNIST denoising autoencoders (S3): depth x latent size grid.

Seed 003 (PyTorch) names nine models, ``DAE_{depth}_{latent}``: 1, 3 or 5
``Conv2d`` layers per side (mirrored by ``ConvTranspose2d``), ReLU after each
layer except the last (sigmoid), and latent tensors of 4 channels at 13x13,
8x8 or 5x5. It gives no kernels, strides or widths, so the layers below are a
documented reconstruction. The first conv is 4x4/2 (28 -> 13); the further
convs are stride 1, 3x3 with padding 1 where the size is kept, valid where it
shrinks, with one 4x4 where an odd reduction is needed (13 -> 8 takes a 3x3
and a 4x4). Two cases cannot follow that rule and are stated here:

* depth 1 with latent 8 or 5: one conv must go 28 -> 8 or 28 -> 5, so it is
  7x7/3 or 8x8/5 (the smallest kernels that cover the 28 pixels exactly with
  no gaps);
* depth 3 with latent 5: two stride-1 convs from 13 to 5 with kernels of at
  most 4 cannot shrink enough, so both are 5x5 valid.

Encoder layers as kernel/stride/padding (output size), by depth and latent:

* depth 1: latent 13: 4/2/0; latent 8: 7/3/0; latent 5: 8/5/0.
* depth 3: latent 13: 4/2/0, 3/1/1, 3/1/1; latent 8: 4/2/0, 3/1/0 (11),
  4/1/0; latent 5: 4/2/0, 5/1/0 (9), 5/1/0.
* depth 5: latent 13: 4/2/0, then four 3/1/1; latent 8: 4/2/0, 3/1/0 (11),
  4/1/0, 3/1/1, 3/1/1; latent 5: 4/2/0, then four 3/1/0 (11, 9, 7, 5).

The decoder applies ``ConvTranspose2d`` with the same (kernel, stride,
padding) in reverse order, so each size is restored exactly. Channels are
not published either: by default they halve towards the 4-channel latent
(depth 3: 16, 8, 4; depth 5: 64, 32, 16, 8, 4), and ``features`` overrides
them. Transposed convolutions use ``transpose_kernel=True`` with padding
``k - 1 - p``, which is exactly PyTorch's ``ConvTranspose2d(k, s, p)``.

Output bias. The last transposed conv's bias starts at ``OUTPUT_BIAS_INIT``
= logit(0.131), the mean pixel of the 48,000 training digits, instead of 0,
so the untrained model outputs the best constant image (0.131) rather than
0.5. With a zero bias, 6 of the 9 cells collapsed at Adam 1e-3, batch 128:
about 87% of target pixels are 0, so the first Adam steps push every
parameter towards "darker" at once, overshoot, and saturate the sigmoid at 0
within ~50 steps, where its gradient vanishes (output mean 0.000, loss stuck
at mean x^2 = 0.112, test PSNR 9.7-9.9 dB for good); lower or higher learning
rates and wider hidden layers did not help. Test PSNR on 512 noisy test
digits after one epoch (375 steps), zero bias (seed 0) -> this bias (seeds
0 and 1):

* d1: l13 9.6 -> 15.5/15.5; l8 9.8 -> 15.4/14.8; l5 9.8 -> 13.8/13.9
  (15.1/15.1 after 750 steps).
* d3: l13 9.9 -> 17.9/17.9; l8 15.6 -> 17.3/17.6; l5 11.4 -> 16.3/16.6.
* d5: l13 ~9.8 -> 19.2/19.1; l8 ~9.8 -> 18.4/18.1 (zero-bias values from
  an earlier run); l5 16.1 (seed 0).

Layers, activations and loss are the seed's; only this initial value changes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# logit of the mean training pixel (0.131): the untrained model outputs the best
# constant image instead of 0.5, which avoids the sigmoid collapsing to 0.
OUTPUT_BIAS_INIT = math.log(0.131 / (1 - 0.131))

# (kernel, stride, padding) of each encoder conv, keyed by (depth, latent size).
LAYERS: dict[tuple[int, int], tuple[tuple[int, int, int], ...]] = {
    (1, 13): ((4, 2, 0),),
    (1, 8): ((7, 3, 0),),
    (1, 5): ((8, 5, 0),),
    (3, 13): ((4, 2, 0), (3, 1, 1), (3, 1, 1)),
    (3, 8): ((4, 2, 0), (3, 1, 0), (4, 1, 0)),
    (3, 5): ((4, 2, 0), (5, 1, 0), (5, 1, 0)),
    (5, 13): ((4, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1)),
    (5, 8): ((4, 2, 0), (3, 1, 0), (4, 1, 0), (3, 1, 1), (3, 1, 1)),
    (5, 5): ((4, 2, 0), (3, 1, 0), (3, 1, 0), (3, 1, 0), (3, 1, 0)),
}


class MnistDAE(nn.Module):
  """Seed 003's convolutional DAE for 28x28 digits.

  Attributes:
    depth: conv layers per side (1, 3 or 5).
    latent_size: spatial size of the latent (13, 8 or 5).
    latent_channels: channels of the latent (4 in the seed).
    features: channels of the encoder convs before the latent one
      (``depth - 1`` values); ``None`` halves towards ``latent_channels``.
    out_channels: channels of the output image.
    output_bias_init: initial bias of the last transposed conv (before the
      sigmoid); the default ``OUTPUT_BIAS_INIT`` = logit(0.131), the mean
      training pixel, keeps training from collapsing (module docstring).
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: unused (no BatchNorm); accepted so that the trainer can
      pass it to any model.
  """

  depth: int = 3
  latent_size: int = 8
  latent_channels: int = 4
  features: Sequence[int] | None = None
  out_channels: int = 1
  output_bias_init: float = OUTPUT_BIAS_INIT
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  def setup(self):
    key = (self.depth, self.latent_size)
    if key not in LAYERS:
      allowed = ", ".join(f"depth={d}/latent_size={s}" for d, s in LAYERS)
      raise ValueError(f"MnistDAE has no layout for depth={self.depth}, "
                       f"latent_size={self.latent_size}; allowed: {allowed}.")
    layers = LAYERS[key]
    if self.features is None:
      hidden = tuple(self.latent_channels * 2**i for i in range(self.depth - 1, 0, -1))
    else:
      hidden = tuple(self.features)
    if len(hidden) != self.depth - 1:
      raise ValueError(f"config.model.features needs depth - 1 = {self.depth - 1} values, "
                       f"got {hidden}.")
    encoder_channels = (*hidden, self.latent_channels)
    self.encoder = [
        nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype)
        for c, (k, s, p) in zip(encoder_channels, layers, strict=True)
    ]
    # Mirror: the i-th transposed conv undoes encoder layer depth-1-i and
    # produces that layer's input channels (the image's for the last one).
    decoder_channels = (*reversed(hidden), self.out_channels)
    bias_inits = (*(nn.initializers.zeros,) * (self.depth - 1),
                  nn.initializers.constant(self.output_bias_init))
    self.decoder = [
        nn.ConvTranspose(c, (k, k), strides=(s, s), padding=((k - 1 - p, k - 1 - p),) * 2,
                         transpose_kernel=True, bias_init=b_init, dtype=self.dtype)
        for c, (k, s, p), b_init in zip(decoder_channels, reversed(layers), bias_inits,
                                        strict=True)
    ]

  def encode(self, images):
    """``[B, 28, 28, C]`` images in [0, 1] to the ``[B, s, s, 4]`` latent (after ReLU)."""
    x = images.astype(self.dtype)
    for conv in self.encoder:
      x = nn.relu(conv(x))
    return x

  def decode(self, z):
    """Latent to ``[B, 28, 28, out_channels]`` float32 images in [0, 1]."""
    *hidden, last = self.decoder
    for conv_t in hidden:
      z = nn.relu(conv_t(z))
    return nn.sigmoid(last(z)).astype(jnp.float32)

  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, 28, 28, C]`` images in [0, 1] to reconstructions in [0, 1].

    Args:
      images: ``[B, 28, 28, C]`` in [0, 1].
      train: unused (no BatchNorm or sampling); kept for the common interface.

    Returns:
      ``[B, 28, 28, out_channels]`` float32 reconstructions in [0, 1].
    """
    del train
    if images.shape[1:3] != (28, 28):
      raise ValueError(f"MnistDAE's layouts are for 28x28 inputs; got {images.shape[1:3]}.")
    z = self.encode(images)
    self.sow("intermediates", "latent", z)
    return self.decode(z)


# Seed 003's nine models (its DAE_{depth}_{latent}).
MnistDAE_d1_l13 = functools.partial(MnistDAE, depth=1, latent_size=13)
MnistDAE_d1_l8 = functools.partial(MnistDAE, depth=1, latent_size=8)
MnistDAE_d1_l5 = functools.partial(MnistDAE, depth=1, latent_size=5)
MnistDAE_d3_l13 = functools.partial(MnistDAE, depth=3, latent_size=13)
MnistDAE_d3_l8 = functools.partial(MnistDAE, depth=3, latent_size=8)
MnistDAE_d3_l5 = functools.partial(MnistDAE, depth=3, latent_size=5)
MnistDAE_d5_l13 = functools.partial(MnistDAE, depth=5, latent_size=13)
MnistDAE_d5_l8 = functools.partial(MnistDAE, depth=5, latent_size=8)
MnistDAE_d5_l5 = functools.partial(MnistDAE, depth=5, latent_size=5)
# Used for testing only: depth 3, latent 8 with two-channel hidden layers.
TinyMnistDAE = functools.partial(MnistDAE, depth=3, latent_size=8, features=(2, 2))
