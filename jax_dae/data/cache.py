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


def entry_path(name: str, params: Mapping, cache_dir: str | os.PathLike | None = None) -> Path:
  """Folder of the cache entry for ``name`` and ``params`` (it may not exist)."""
  root = Path(cache_dir) if cache_dir else default_cache_dir()
  return root / f"{name}-{cache_key(params)}"


def read_manifest(name: str, params: Mapping, cache_dir: str | os.PathLike | None = None):
  """The manifest of a complete cache entry as a dict, or ``None`` if there is none."""
  entry = entry_path(name, params, cache_dir)
  if _complete_splits(entry) is None:
    return None
  return json.loads((entry / "manifest.json").read_text())


def files_fingerprint(root: str | os.PathLike, relpaths: list[str]) -> str:
  """Cheap content fingerprint of many files: sha256 over (relative path, size, mtime).

  Editing, adding, removing or renaming a file changes it; rewriting a file
  with identical bytes and mtime does not (acceptable for image folders,
  whose files are not hashed because that would read the whole dataset).
  """
  root = Path(root)
  h = hashlib.sha256()
  for rel in sorted(relpaths):
    st = (root / rel).stat()
    h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def cached_splits(
    name: str,
    params: Mapping,
    build: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
    *,
    extra: Callable[[], Mapping] | None = None,
) -> dict[str, np.ndarray]:
  """Returns the splits from the cache, building and storing them if needed.

  Only a folder with ``manifest.json`` counts as an entry; the manifest is
  written last, inside a temporary folder that is renamed into place, so a
  half-written entry (a leftover ``.<entry>.*`` folder, or one without a
  manifest) is never read.

  Args:
    name: readable prefix of the entry's folder name.
    params: everything the content depends on (source fingerprint,
      preprocessing, split); it is hashed into the key and stored.
    build: makes ``{split: uint8 array}`` when the entry is missing.
    cache_dir: root folder; ``default_cache_dir()`` if ``None``.
    extra: called after ``build``; its JSON-serialisable result is stored in
      the manifest under ``"extra"`` (e.g. the files a source skipped), for
      ``read_manifest``.

  Returns:
    ``{split: array}``, memory-mapped read-only from the cache.
  """
  entry = entry_path(name, params, cache_dir)
  root = entry.parent
  manifest = entry / "manifest.json"
  if (splits := _complete_splits(entry)) is not None:
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
    if extra is not None:
      meta["extra"] = dict(extra())
    (tmp / "manifest.json").write_text(json.dumps(meta, indent=1, default=str))
    if entry.exists():
      _discard_incomplete(entry)
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


def _complete_splits(entry: Path) -> list[str] | None:
  """The split names of a complete entry (manifest readable, every file there), else None."""
  try:
    splits = json.loads((entry / "manifest.json").read_text())["splits"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return splits if all((entry / f"{s}.npy").is_file() for s in splits) else None


def _discard_incomplete(entry: Path) -> None:
  """Moves aside and deletes an entry folder that lacks its manifest or a split file.

  Complete entries only ever appear by renaming a finished folder, so such a
  folder is debris (a copy interrupted by hand, a file deleted later).
  """
  if _complete_splits(entry) is not None:
    return
  logging.warning("Ignoring incomplete data cache %s; replacing it.", entry)
  trash = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.trash."))
  try:
    os.rename(entry, trash / "entry")
  except FileNotFoundError:
    pass  # Another process removed it first.
  finally:
    shutil.rmtree(trash, ignore_errors=True)
