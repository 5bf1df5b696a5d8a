"""Model families, chosen by name from the config (``config.model.name``).

Each entry is a Flax Linen module class or a ``functools.partial`` preset of
one. Models take ``[B, H, W, C]`` images in [0, 1] and return reconstructions
in [0, 1]; ``train`` switches BatchNorm (and sampling, for variational models)
between training and evaluation behaviour.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jax_dae.models import dual, graz, mnist
from jax_dae.models.cae import CAE, VCAE, ResidualBlock

# Seed 000 (S0).
ResCAE = functools.partial(CAE, num_res_blocks=3)
# Used for testing only: the same graph at a few hundred times less compute.
TinyCAE = functools.partial(CAE, encoder_features=(8, 8, 8, 16), decoder_features=(16, 8, 8),
                            stem_kernel=3)
TinyResCAE = functools.partial(TinyCAE, num_res_blocks=1)
# The smoke runs' model (configs/lfw_cae.py:runlocal): two resolution levels of
# 16-64 channels; on 32x32 faces it beats a blurred input within minutes on a CPU.
SmallCAE = functools.partial(CAE, encoder_features=(16, 32, 64), decoder_features=(64, 32),
                             stem_kernel=3)
SmallResCAE = functools.partial(SmallCAE, num_res_blocks=1)
# Used for testing only.
TinyVCAE = functools.partial(VCAE, encoder_features=(8, 8, 8, 16), decoder_features=(16, 8, 8),
                             stem_kernel=3)

# Compute dtypes a model may run in (parameters stay float32).
DTYPES = ("float32", "bfloat16")

_REGISTRY: dict[str, Any] = {
    "CAE": CAE,
    "ResCAE": ResCAE,
    "SmallCAE": SmallCAE,
    "SmallResCAE": SmallResCAE,
    "TinyCAE": TinyCAE,
    "TinyResCAE": TinyResCAE,
    "TinyVCAE": TinyVCAE,
    "VCAE": VCAE,
    # Seed 001 (S1): GrazAE is the final model (network 1, bottleneck 1000).
    "GrazAE": graz.GrazAE,
    "GrazAE_net1": graz.GrazAE_net1,
    "GrazAE_net2": graz.GrazAE_net2,
    "GrazAE_net3": graz.GrazAE_net3,
    "GrazFCAE": graz.GrazFCAE,
    "TinyGrazAE": graz.TinyGrazAE,
    "TinyGrazFCAE": graz.TinyGrazFCAE,
    # Seed 002 (S2).
    "SingleAE": dual.SingleAE,
    "SingleAE_sep": dual.SingleAE_sep,
    "DualAE": dual.DualAE,
    "DualAE_sep": dual.DualAE_sep,
    "DualSkipAE": dual.DualSkipAE,
    "DualSkipAE_sep": dual.DualSkipAE_sep,
    "TinyDualSkipAE": dual.TinyDualSkipAE,
    # Seed 003 (S3): MnistDAE_d{depth}_l{latent size}.
    "MnistDAE": mnist.MnistDAE,
    "MnistDAE_d1_l13": mnist.MnistDAE_d1_l13,
    "MnistDAE_d1_l8": mnist.MnistDAE_d1_l8,
    "MnistDAE_d1_l5": mnist.MnistDAE_d1_l5,
    "MnistDAE_d3_l13": mnist.MnistDAE_d3_l13,
    "MnistDAE_d3_l8": mnist.MnistDAE_d3_l8,
    "MnistDAE_d3_l5": mnist.MnistDAE_d3_l5,
    "MnistDAE_d5_l13": mnist.MnistDAE_d5_l13,
    "MnistDAE_d5_l8": mnist.MnistDAE_d5_l8,
    "MnistDAE_d5_l5": mnist.MnistDAE_d5_l5,
    "TinyMnistDAE": mnist.TinyMnistDAE,
}


def available() -> list[str]:
  """Names accepted by ``config.model.name``."""
  return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as ``name`` with keyword overrides.

  Raises:
    ValueError: for an unknown name, listing the available ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"config.model.name={name!r} is unknown; available: {', '.join(available())}.")
  return _REGISTRY[name](**kwargs)


def from_config(config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None,
                 out_channels: int | None = None) -> nn.Module:
  """The model named by ``config.model.name`` in ``config.model.dtype``."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r} is unknown; allowed: "
                     f"{', '.join(DTYPES)}.")
  kwargs = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
  kwargs["dtype"] = jnp.dtype(config.model.dtype)
  if bn_axis_name is not None:
    kwargs["bn_axis_name"] = bn_axis_name
  if out_channels is not None:
    kwargs["out_channels"] = out_channels
  return create(config.model.name, **kwargs)


def check_fits(model: nn.Module, name: str, image_shape: tuple[int, ...]) -> None:
  """Raises a one-line error if the model cannot map images of this shape to themselves."""
  try:
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *image_shape)))[0])
  except Exception as e:  # Shape errors surface as many exception types.
    raise ValueError(f"config.model.name={name!r} cannot take images of shape {image_shape} "
                     f"from config.data: {str(e).splitlines()[0]}") from None
  if out.shape[1:] != tuple(image_shape):
    raise ValueError(f"config.model.name={name!r} maps images of shape {image_shape} to "
                     f"{out.shape[1:]}; pick a model made for config.data's image size.")


__all__ = ["CAE", "DTYPES", "VCAE", "ResidualBlock", "ResCAE", "SmallCAE", "TinyCAE", "TinyVCAE",
           "available", "check_fits", "create", "from_config"]
