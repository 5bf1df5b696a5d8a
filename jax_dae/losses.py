"""Reconstruction losses, chosen by name from the config.

A loss is ``loss(reconstruction, clean, aux) -> (scalar, {name: scalar})`` on
``[B, H, W, C]`` images in [0, 1]; ``aux`` carries model side outputs (for
instance a variational model's KL term). The dictionary holds the terms that
make up the scalar, for logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

Loss = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict]]


def mse(reconstruction: jax.Array, clean: jax.Array) -> jax.Array:
  """Mean squared error over all pixels and channels (seed 000's pixel loss)."""
  return jnp.mean(jnp.square(reconstruction.astype(jnp.float32) - clean.astype(jnp.float32)))


def _pixel_mse(config) -> Loss:
  def loss(reconstruction, clean, aux):
    del aux
    value = mse(reconstruction, clean)
    return value, {"mse": value}

  return loss


_REGISTRY: dict[str, Callable[..., Loss]] = {
    "mse": _pixel_mse,
}


def available() -> list[str]:
  """Names accepted by ``config.loss.name``."""
  return sorted(_REGISTRY)


def create(config) -> Loss:
  """Builds the loss named by ``config.name`` from its config block.

  Raises:
    ValueError: for an unknown name, listing the available ones.
  """
  if config.name not in _REGISTRY:
    raise ValueError(f"config.loss.name={config.name!r} is unknown; available: {', '.join(available())}.")
  return _REGISTRY[config.name](config)
