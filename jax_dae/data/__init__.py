"""Datasets: sources, preprocessing and on-disk caches.

``load(config.data)`` returns ``{split: uint8 [N, H, W, C]}`` for the source
named by ``config.data.name``.
"""

from __future__ import annotations

import numpy as np

from jax_dae.data import lfw
from jax_dae.data.download import DataMissingError

_SOURCES = {
    "lfw": lfw.load,
}


def available() -> list[str]:
  """Names accepted by ``config.data.name``."""
  return sorted(_SOURCES)


def load(config) -> dict[str, np.ndarray]:
  """Loads the splits of the dataset that ``config.name`` names."""
  if config.name not in _SOURCES:
    raise ValueError(f"config.data.name={config.name!r} is unknown; available: {', '.join(available())}.")
  return _SOURCES[config.name](config)


__all__ = ["DataMissingError", "available", "load"]
