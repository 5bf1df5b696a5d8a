"""Datasets: sources, preprocessing and on-disk caches.

``load(config.data)`` returns ``{split: uint8 [N, H, W, C]}`` for the source
named by ``config.data.name``:

  * ``lfw``: Labeled Faces in the Wild (seed 000; with ``mode``/``resize``/
    ``crop`` also the grayscale 100x100 and RGB 64x64 face sets that stand in
    for IMDB-WIKI and AFHQ, see ``lfw.PRESETS``);
  * ``mnist``: MNIST from the official IDX files or TFDS (seed 003);
  * ``folder``: any folder of images;
  * ``tfds``: any prepared TFDS image dataset (``config.data.tfds_name``).

``pipeline`` streams batches from the host to the devices when a split does
not fit in device memory. See docs/data.md.
"""

from __future__ import annotations

import numpy as np

from jax_dae.data import folder, lfw, mnist, tfds_source
from jax_dae.data.download import DataMissingError
from jax_dae.data.preprocess import BadImageError

_SOURCES = {
    "folder": folder.load,
    "lfw": lfw.load,
    "mnist": mnist.load,
    "tfds": tfds_source.load,
}


def available() -> list[str]:
  """Names accepted by ``config.data.name``."""
  return sorted(_SOURCES)


def load(config) -> dict[str, np.ndarray]:
  """Loads the splits of the dataset that ``config.name`` names.

  Args:
    config: the ``config.data`` block (fields per source: docs/data.md).

  Returns:
    ``{split: uint8 [N, H, W, C]}``, memory-mapped from the cache.
  """
  if config.name not in _SOURCES:
    raise ValueError(
        f"config.data.name={config.name!r} is unknown; available: {', '.join(available())}."
    )
  return _SOURCES[config.name](config)


__all__ = ["BadImageError", "DataMissingError", "available", "load"]
