"""Seed 000's convolutional autoencoders (CAE family) on 112x112 RGB faces.

Reconstructed after Trinidad, "Reconstructing Obfuscated Human Faces" (CS231n
2017), which follows Johnson et al.'s transformation network; seed 000 does not
publish its layers, so this is a documented reconstruction (see SPEC.md):

  conv 9x9/1 -> 64, conv 4x4/2 -> 64, conv 4x4/2 -> 128, conv 4x4/2 -> 256
  (112 -> 14x14x256), [residual blocks], transposed conv 4x4/2 -> 256 -> 128
  -> 64 (back to 112), conv 9x9 -> C with tanh.

BatchNorm + ReLU follow every layer but the last. The network works on inputs
normalised as seed 000 does, ``(x - 0.5) / 0.5``; the module takes and returns
images in [0, 1] so that losses and metrics never see the normalisation.

``VCAE`` (seed 000's variational CAE, also a reconstruction: the seed shows
only a diagram) keeps the encoder and decoder and puts a Gaussian latent
between them: two 1x1 convolutions map the 14x14x256 encoder output to the
mean and log-variance of ``q(z | x)``, a 14x14x``latent_features`` map.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_dae.models.layers import DownConv2x, SameConv, UpConv2x


class ResidualBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus identity (Johnson et al.)."""

  features: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name, dtype=self.dtype
    )
    y = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", dtype=self.dtype)(y)
    return x + norm()(y)


class CAE(nn.Module):
  """Convolutional autoencoder of seed 000, with its residual variant.

  Attributes:
    encoder_features: output channels of the stem and the stride-2 convs.
    decoder_features: output channels of the stride-2 transposed convs.
    stem_kernel: kernel size of the first and last convolution.
    num_res_blocks: residual blocks at the bottleneck (0: CAE, 3: ResCAE).
    out_channels: channels of the output image.
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: axis to average BatchNorm statistics over under
      ``pmap``/``shard_map``; ``None`` under ``jit`` with shardings.
    upsample: how the transposed convolutions are computed, "transpose",
      "subpixel" or "auto" (``layers.UpConv2x``): the same function and
      parameters, different speed.
    full_res_conv: how the 9x9 stem and output convolutions are computed,
      "xla", "space_to_depth", "matmul" or "auto" (``layers.SameConv``); same
      function and parameters.
    downsample: how the stride-2 encoder convolutions are computed, "xla",
      "space_to_depth" or "auto" (``layers.DownConv2x``); same function and
      parameters.
  """
  # Defaults: "auto", the forms measured fastest on the backend the model is traced
  # for (``layers.AUTO_FORMS``, docs/benchmarks.md). On an H100 the space-to-depth 9x9
  # convolutions took CAE mse b64 bf16 from 7,684 to 11,802 img/s and the space-to-depth
  # down-convolutions were slower in every row; on a CPU every convolution as matmuls.

  encoder_features: Sequence[int] = (64, 64, 128, 256)
  decoder_features: Sequence[int] = (256, 128, 64)
  stem_kernel: int = 9
  num_res_blocks: int = 0
  out_channels: int = 3
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  upsample: str = "auto"
  full_res_conv: str = "auto"
  downsample: str = "auto"

  def _norm(self, train: bool):
    return functools.partial(
        nn.BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name, dtype=self.dtype
    )

  def encode(self, x, *, train: bool):
    norm = self._norm(train)
    # Explicit names keep the parameter tree of nn.Conv layers: Conv_0 .. Conv_{n}.
    first, *rest = self.encoder_features
    x = SameConv(first, kernel_size=self.stem_kernel, impl=self.full_res_conv,
                 dtype=self.dtype, name="Conv_0")(x)
    x = nn.relu(norm()(x))
    for i, features in enumerate(rest, start=1):
      x = DownConv2x(features, impl=self.downsample, dtype=self.dtype, name=f"Conv_{i}")(x)
      x = nn.relu(norm()(x))
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(x.shape[-1], dtype=self.dtype, bn_axis_name=self.bn_axis_name)(
          x, train=train
      )
    return x

  def decode(self, z, *, train: bool):
    norm = self._norm(train)
    for i, features in enumerate(self.decoder_features):
      z = UpConv2x(features, impl=self.upsample, dtype=self.dtype, name=f"ConvTranspose_{i}")(z)
      z = nn.relu(norm()(z))
    out = SameConv(self.out_channels, kernel_size=self.stem_kernel, impl=self.full_res_conv,
                   dtype=self.dtype, name=f"Conv_{len(self.encoder_features)}")
    return jnp.tanh(out(z))

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, H, W, C]`` images in [0, 1] to reconstructions in [0, 1]."""
    x = (images.astype(self.dtype) - 0.5) / 0.5
    y = self.decode(self.encode(x, train=train), train=train)
    return (y.astype(jnp.float32) + 1.0) / 2.0


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mean, exp(logvar)) || N(0, 1))`` summed over all but the batch axis, ``[B]``."""
  mean = mean.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


class VCAE(CAE):
  """Variational CAE: the CAE with a reparameterised Gaussian latent.

  Training (``train=True``) samples ``z = mean + exp(logvar / 2) * eps`` with
  ``eps ~ N(0, I)`` from the rng stream ``"sample"``; evaluation decodes the
  mean. The model sows ``"kl"`` into the ``"aux"`` collection: the KL
  divergence to ``N(0, I)`` *summed over the latent's elements* (nats per
  image, the standard ELBO term) and averaged over the batch. The loss adds
  ``config.loss.kl_weight`` times it; with a pixel MSE that averages over
  ``D = H * W * C`` values, ``kl_weight = 2 * sigma**2 / D`` makes the sum the
  negative ELBO of a Gaussian decoder with noise ``sigma`` (scaled by
  ``2 * sigma**2 / D``).

  Attributes:
    latent_features: channels of the latent (default: the encoder's last).
  """

  latent_features: int | None = None

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    """Maps ``[B, H, W, C]`` images in [0, 1] to reconstructions in [0, 1]."""
    x = (images.astype(self.dtype) - 0.5) / 0.5
    h = self.encode(x, train=train)
    features = self.latent_features or h.shape[-1]
    mean = nn.Conv(features, (1, 1), dtype=self.dtype, name="latent_mean")(h)
    logvar = nn.Conv(features, (1, 1), dtype=self.dtype, name="latent_logvar")(h)
    self.sow("aux", "kl", jnp.mean(gaussian_kl(mean, logvar)))
    if train:
      eps = jax.random.normal(self.make_rng("sample"), mean.shape, jnp.float32)
      std = jnp.exp(0.5 * logvar.astype(jnp.float32))
      z = (mean.astype(jnp.float32) + std * eps).astype(self.dtype)
    else:
      z = mean
    y = self.decode(z, train=train)
    return (y.astype(jnp.float32) + 1.0) / 2.0
