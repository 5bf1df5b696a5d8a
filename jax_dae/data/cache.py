"""Per-split uint8 caches on disk, keyed by source content and preprocessing.

A cache entry is a folder ``<cache_dir>/<name>-<key>/`` holding one ``.npy``
per split and ``manifest.json``. It is built in a temporary folder and renamed
into place in one step, so a run killed while building never leaves an entry
that a later run would read; a changed source or preprocessing parameter gives
a different key and so a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from absl import logging

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
  """``$JAX_DAE_CACHE`` if set, else ``~/.cache/jax_dae``."""
  return Path(os.environ.get("JAX_DAE_CACHE", Path.home() / ".cache" / "jax_dae"))


def cache_key(params: Mapping) -> str:
  """Stable 16-hex-digit key of JSON-serialisable parameters."""
  blob = json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_splits(
    name: str,
    params: Mapping,
    build: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
  """Returns the splits from the cache, building and storing them if needed.

  Args:
    name: readable prefix of the entry's folder name.
    params: everything the content depends on (source fingerprint,
      preprocessing, split); it is hashed into the key and stored.
    build: makes ``{split: uint8 array}`` when the entry is missing.
    cache_dir: root folder; ``default_cache_dir()`` if ``None``.

  Returns:
    ``{split: array}``, memory-mapped read-only from the cache.
  """
  root = Path(cache_dir) if cache_dir else default_cache_dir()
  entry = root / f"{name}-{cache_key(params)}"
  manifest = entry / "manifest.json"
  if manifest.is_file():
    splits = json.loads(manifest.read_text())["splits"]
    logging.info("Reusing data cache %s", entry)
    return {s: np.load(entry / f"{s}.npy", mmap_mode="r") for s in splits}

  arrays = build()
  root.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}."))
  try:
    for split, array in arrays.items():
      np.save(tmp / f"{split}.npy", np.ascontiguousarray(array))
    meta = {
        "params": dict(params),
        "splits": list(arrays),
        "shapes": {s: list(a.shape) for s, a in arrays.items()},
    }
    (tmp / "manifest.json").write_text(json.dumps(meta, indent=1, default=str))
    try:
      os.rename(tmp, entry)
    except OSError:
      # Another process finished the same entry first; theirs is identical.
      if not manifest.is_file():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("Wrote data cache %s", entry)
  return {s: np.load(entry / f"{s}.npy", mmap_mode="r") for s in arrays}
