"""MNIST, as seed 003 uses it: 28x28x1 uint8 digits.

Sources, by ``config.data.variant``:
  * ``"idx"`` (default): the official gzipped IDX files, under
    ``<config.data.dir>/mnist/`` (or directly in ``config.data.dir``); only the
    two image files are read (labels play no part in denoising). Each file is
    checked against the official sha256 (its md5 is the one published with
    the dataset). Missing files are downloaded from the mirror torchvision
    uses (then Google's CVDF mirror) when ``config.data.download`` allows it,
    else ``DataMissingError`` names the file and the folder.
  * ``"tfds"``: the TFDS ``mnist`` builder, already prepared under
    ``config.data.tfds_data_dir`` (see ``tfds_source``).

Splits: the official training set (60,000) is the pool ``"train"``, the
official test set (10,000) the pool ``"test"``. Seed 003 cuts train/val 80/20
from the training set by seed and keeps the test set:
``split={"train": 0.8, "val": 0.2, "test": 1.0}`` (see ``splits``). An output
split named ``test`` is taken from the official test set unless
``config.data.split_from`` says otherwise; every other one from the training
set. ``resize``, ``crop`` and ``mode`` are not used: images stay 28x28x1.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from absl import logging

from jax_dae.data import cache, download, splits

IDX_IMAGES_MAGIC = 2051
# Torchvision's mirror first, then the one TFDS uses; both serve the official files.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class IdxFile:
  name: str
  num_images: int
  md5: str
  sha256: str


FILES = {
    "train": IdxFile(
        "train-images-idx3-ubyte.gz", 60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "test": IdxFile(
        "t10k-images-idx3-ubyte.gz", 10000, "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
}
VARIANTS = ("idx", "tfds")
# Seed 003's split (fractions of the official sets).
SEED_003_SPLIT = {"train": 0.8, "val": 0.2, "test": 1.0}


def read_idx_images(path: str | Path) -> np.ndarray:
  """Reads a (gzipped) IDX3 image file into ``[N, rows, cols]`` uint8.

  Raises:
    ValueError: naming the file when its header or length is wrong.
  """
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 16:
    raise ValueError(f"{path} is too short to be an IDX image file.")
  magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
  if magic != IDX_IMAGES_MAGIC:
    raise ValueError(f"{path} has IDX magic {magic}, expected {IDX_IMAGES_MAGIC} (images).")
  if len(data) != 16 + int(n) * int(rows) * int(cols):
    raise ValueError(
        f"{path} holds {len(data) - 16} pixel bytes, its header says {n}x{rows}x{cols}."
    )
  return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def find_files(data_dir: str | Path, *, allow_download: bool) -> dict[str, Path]:
  """Locates, checks (and if allowed downloads) the two image files.

  Args:
    data_dir: ``config.data.dir``; files are looked for in ``<dir>/mnist/``
      then ``<dir>/``; downloads go to ``<dir>/mnist/``.
    allow_download: ``config.data.download``.

  Returns:
    ``{"train": path, "test": path}``.

  Raises:
    DataMissingError: a file is missing and cannot be downloaded (names it
      and where to put it).
    ValueError: a file is there but is not the official one.
  """
  root = Path(data_dir).expanduser()
  found = {}
  for pool, spec in FILES.items():
    candidates = [root / "mnist" / spec.name, root / spec.name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None and allow_download:
      for mirror in MIRRORS:
        try:
          path = download.download(mirror + spec.name, candidates[0], sha256=spec.sha256)
          break
        except (OSError, ValueError) as e:
          logging.warning("Download of %s failed: %s", mirror + spec.name, e)
    if path is None:
      raise download.DataMissingError(
          f"MNIST file {spec.name} not found: put it in {candidates[0].parent.resolve()}/ "
          f"(md5 {spec.md5}), or set --config.data.dir to the folder whose mnist/ subfolder "
          f"holds it; it can be downloaded from {MIRRORS[0]}{spec.name}."
      )
    if download.sha256_file(path) != spec.sha256:
      md5 = hashlib.md5(path.read_bytes()).hexdigest()
      raise ValueError(
          f"{path} is not the official MNIST file (md5 {md5}, expected {spec.md5}); replace it "
          f"with the official {spec.name} from {MIRRORS[0]}{spec.name}."
      )
    found[pool] = path
  return found


def load(config) -> dict[str, np.ndarray]:
  """Loads the MNIST splits (uint8 ``[N, 28, 28, 1]``), using the cache.

  Args:
    config: ``config.data`` with ``split``, ``split_seed``, ``cache_dir`` and
      optionally ``variant`` ("idx" default, or "tfds"), ``split_from``,
      ``dir`` and ``download`` (variant "idx"), ``tfds_data_dir`` ("tfds").

  Returns:
    ``{split: [N, 28, 28, 1] uint8}`` in the order of ``config.split``.
  """
  variant = config.get("variant", "idx")
  if variant not in VARIANTS:
    raise ValueError(f"config.data.variant={variant!r} is unknown for mnist; allowed: "
                     f"{', '.join(VARIANTS)}.")
  split_from = dict(config.get("split_from", None) or {})
  split_from = {s: ("test" if s == "test" else "train") for s in config.split} | split_from
  if variant == "tfds":
    from jax_dae.data import tfds_source  # Imported lazily: TFDS is heavy.

    return tfds_source.load_builder(
        "mnist", data_dir=config.get("tfds_data_dir", "") or None, image_key="image",
        mode="L", resize=0, crop=0, background=255, split=dict(config.split),
        split_from=split_from, split_seed=config.split_seed,
        cache_dir=config.get("cache_dir", "") or None,
    )

  files = find_files(config.get("dir", "data"), allow_download=config.get("download", False))
  params = {
      "source": {pool: FILES[pool].sha256 for pool in files},
      "split": dict(config.split),
      "split_from": split_from,
      "split_seed": config.split_seed,
  }

  def build() -> dict[str, np.ndarray]:
    pools = {pool: read_idx_images(path) for pool, path in files.items()}
    for pool, images in pools.items():
      if len(images) != FILES[pool].num_images:
        raise ValueError(f"{files[pool]} holds {len(images)} images, expected "
                         f"{FILES[pool].num_images}.")
    assignment = splits.resolve({p: len(a) for p, a in pools.items()}, config.split, split_from,
                                config.split_seed)
    return {s: pools[pool][idx][..., None] for s, (pool, idx) in assignment.items()}

  return cache.cached_splits("mnist", params, build, config.get("cache_dir", "") or None)
