"""Labeled Faces in the Wild, preprocessed as seed 000 does.

Sources, tried in this order under ``config.data.dir``:
  1. the extracted folder (``lfw-deepfunneled/``, ``lfw_funneled/``, ``lfw/``);
  2. the official archive (``lfw-deepfunneled.tgz``, ``lfw-funneled.tgz``,
     ``lfw.tgz``);
  3. a compact carry form, small enough to send to a GPU machine (made by
     ``scripts/make_lfw_carry.py``): for a preset below,
     ``lfw-deepfunneled.<preset>.tar.gz`` (its preprocessed images as
     quality-95 JPEGs; the script prints how far they are from the exact
     ones), else
     ``lfw-deepfunneled.crop.tar.gz`` (lossless JPEG crops of the region that
     seed 000's preprocessing reads; a setting that reads outside it is
     refused);
  4. a download (the public mirrors scikit-learn uses), when allowed;
  5. otherwise ``DataMissingError`` naming the file and the folder.
The TFDS ``lfw`` builder is read with ``variant="tfds"``.

Seed 000: resize 250 -> 224, center crop 112, RGB, random split into test 3708
/ validation 1905 / train 7620. Images stay uint8; normalisation belongs to
the model. Seed 000 used the *funneled* variant; the default here is the
deep-funneled one (the copy available offline); alignment differs slightly.

The same source gives the face sets that stand in for data we cannot get
(``PRESETS``): ``config.data.mode="L"`` with resize/crop 100 for seed 002's
100x100 grayscale faces (IMDB-WIKI), and resize/crop 64 in RGB for seed 001's
64x64 images (AFHQ). Both shrink the whole 250x250 frame (no crop), as seed
001 did to AFHQ ("reducing the image size to 64x64"); LFW's frame, a face
with some background, is close to IMDB-WIKI's face crops with margin.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from jax_dae.data import cache, download, preprocess, splits


@dataclass(frozen=True)
class Variant:
  folder: str
  archive: str
  url: str | None
  # sha256 of the archive file, where the mirror publishes one.
  archive_sha256: str | None
  # sha256 over the sorted lines "<member name>\t<sha256 of image bytes>\n":
  # checks the images themselves, whatever archive they came in.
  content_sha256: str | None


VARIANTS = {
    "deepfunneled": Variant(
        folder="lfw-deepfunneled",
        archive="lfw-deepfunneled.tgz",
        url="http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz",
        archive_sha256=None,
        content_sha256="be3ac79383f2bcc13ca23532ec809615bfa31c3c99fea312ef337a5dc1df0184",
    ),
    "funneled": Variant(
        folder="lfw_funneled",
        archive="lfw-funneled.tgz",
        url="https://ndownloader.figshare.com/files/5976015",
        archive_sha256="b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a",
        content_sha256=None,
    ),
    "original": Variant(
        folder="lfw",
        archive="lfw.tgz",
        url="https://ndownloader.figshare.com/files/5976018",
        archive_sha256="055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
        content_sha256=None,
    ),
}
# Field values of config.data for the substitute face sets (name="lfw").
PRESETS = {
    # Seed 002 (dual AE): grayscale 100x100 faces instead of IMDB-WIKI.
    "gray100": {"mode": "L", "resize": 100, "crop": 100},
    # Seed 001 (Graz AE): 64x64 RGB images instead of AFHQ cats and dogs.
    "rgb64": {"mode": "RGB", "resize": 64, "crop": 64},
}
CARRY_SUFFIX = ".crop.tar.gz"
CARRY_META = "CROP.json"


def preset_of(mode: str, resize: int, crop: int) -> str | None:
  """The name of the preset with these fields, if any."""
  fields = {"mode": mode, "resize": resize, "crop": crop}
  return next((name for name, preset in PRESETS.items() if preset == fields), None)


def preset_carry_name(variant: str, preset: str) -> str:
  """File name of the carry form that holds ``preset``'s preprocessed images."""
  return f"{VARIANTS[variant].folder}.{preset}.tar.gz"
NUM_IMAGES = 13233


def _is_image(name: str) -> bool:
  return name.lower().endswith((".jpg", ".jpeg"))


class DamagedArchiveError(ValueError):
  """An archive cannot be read to its end; the message says how to replace it."""


# What reading a truncated or corrupted .tgz raises: gzip's EOFError and
# BadGzipFile, zlib's error, tarfile's ReadError and StreamError. (Other
# OSErrors, such as a permission error, are not the archive's fault.)
_ARCHIVE_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError)


def _damaged(path: Path, error: BaseException) -> DamagedArchiveError:
  """The one-line error for an unreadable archive: which file, and how to get a good one."""
  if path.name.endswith(CARRY_SUFFIX) or any(path.name == preset_carry_name(v, p)
                                             for v in VARIANTS for p in PRESETS):
    remedy = "delete it and make it again with scripts/make_lfw_carry.py"
  else:
    variant = next((v for v in VARIANTS.values() if v.archive == path.name), None)
    remedy = "delete it and download it again"
    if variant is not None and variant.url:
      remedy += f" from {variant.url}"
    if variant is not None and variant.archive_sha256:
      remedy += f" (its sha256 is {variant.archive_sha256})"
    else:
      # No checksum of the whole archive is published for this variant; the
      # shared copy's is recorded beside it.
      remedy += ", or copy it again (../shared/data/README.md gives the shared copy's sha256)"
  reason = " ".join(str(error).split()) or "unreadable"
  return DamagedArchiveError(
      f"{path} is damaged or truncated ({type(error).__name__}: {reason}): {remedy}.")


class _Source:
  """Reads ``(member name, bytes)`` pairs and how the bytes sit in the original.

  The listing (and a carry form's placement) is read on first use only: a run
  served from the cache needs just the fingerprint, not a pass over an archive.
  """

  def __init__(self, path: Path):
    self.path = path

  @functools.cached_property
  def _index(self) -> tuple[list[str], tuple[int, int], tuple[int, int] | None]:
    if self.path.is_dir():
      names = (str(p.relative_to(self.path.parent)) for p in self.path.rglob("*")
               if _is_image(p.name))
      return sorted(names), (0, 0), None
    origin, full_size = (0, 0), None
    try:
      with tarfile.open(self.path) as tar:
        members = tar.getnames()
        if CARRY_META in members:
          meta = json.load(tar.extractfile(CARRY_META))
          origin, full_size = tuple(meta["origin"]), tuple(meta["full_size"])
    except _ARCHIVE_ERRORS as e:
      raise _damaged(self.path, e) from e
    return sorted(n for n in members if _is_image(n)), origin, full_size

  @property
  def names(self) -> list[str]:
    return self._index[0]

  @property
  def origin(self) -> tuple[int, int]:
    """Where the images sit in the original frame (a carry form's crop)."""
    return self._index[1]

  @property
  def full_size(self) -> tuple[int, int] | None:
    """The original frame's size when the images are a part of it, else ``None``."""
    return self._index[2]

  def fingerprint(self) -> str:
    if self.path.is_dir():
      return "dir:" + cache.files_fingerprint(self.path.parent, self.names)
    return "file:" + download.sha256_file(self.path)

  def read(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    if self.path.is_dir():
      for name in sorted(wanted):
        yield name, (self.path.parent / name).read_bytes()
      return
    # Stream the archive once; members come in archive order.
    try:
      with tarfile.open(self.path, "r|*") as tar:
        for member in tar:
          if member.name in wanted:
            yield member.name, tar.extractfile(member).read()
    except _ARCHIVE_ERRORS as e:
      raise _damaged(self.path, e) from e


def find_source(
    data_dir: str | os.PathLike, variant: str, *, allow_download: bool, preset: str | None = None
) -> Path:
  """Locates (or downloads) the LFW files for ``variant`` under ``data_dir``.

  ``preset`` (a key of ``PRESETS``) also accepts that preset's carry form.

  Raises:
    DataMissingError: nothing found and no download possible; says which file
      to put where.
  """
  if variant not in VARIANTS:
    raise ValueError(
        f"config.data.variant={variant!r} is unknown; allowed: {', '.join(VARIANTS)}, tfds."
    )
  v = VARIANTS[variant]
  root = Path(data_dir).expanduser()
  candidates = [root / v.folder, root / v.archive]
  if preset is not None:
    candidates.append(root / preset_carry_name(variant, preset))
  candidates.append(root / (v.folder + CARRY_SUFFIX))
  for candidate in candidates:
    if candidate.exists():
      return candidate
  where = root.resolve()
  if allow_download and v.url:
    try:
      path = download.download(v.url, root / v.archive, sha256=v.archive_sha256)
      if v.content_sha256 and content_digest(path) != v.content_sha256:
        path.unlink()
        raise ValueError(f"The images in {v.url} are not the expected LFW {variant} set.")
      return path
    except (OSError, ValueError) as e:
      logging.warning("Download of %s failed: %s", v.url, e)
  raise download.DataMissingError(
      f"LFW ({variant}) not found: put {v.archive} (or its extracted folder {v.folder}/) in "
      f"{where}, or set --config.data.dir to the folder that holds it"
      + (f"; it can be downloaded from {v.url}" if v.url else "")
      + "."
  )


def content_digest(path: Path) -> str:
  """sha256 over "<name>\\t<sha256 of bytes>" lines of every image, sorted by name."""
  source = _Source(path)
  lines = sorted(
      f"{name}\t{hashlib.sha256(data).hexdigest()}\n"
      for name, data in source.read(set(source.names))
  )
  return hashlib.sha256("".join(lines).encode()).hexdigest()


def _decode_all(
    source: _Source, names: list[str], resize: int, crop: int, mode: str = "RGB"
) -> np.ndarray:
  """Decodes and preprocesses ``names`` (in that order) with all local cores."""
  position = {name: i for i, name in enumerate(names)}
  out = np.zeros((len(names), crop, crop, preprocess.channels(mode)), np.uint8)

  def work(name: str, data: bytes) -> None:
    image = preprocess.decode(data, mode=mode, name=f"{source.path}:{name}")
    try:
      out[position[name]] = preprocess.resize_center_crop(
          image, resize=resize, crop=crop, origin=source.origin, full_size=source.full_size
      )
    except ValueError as e:
      hint = ""
      if source.full_size is not None:
        hint = (" This carry form was made for another preprocessing: use the archive, or make "
                "the matching one with scripts/make_lfw_carry.py.")
      raise ValueError(f"{source.path}:{name}: {e}{hint}") from None

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    futures = [pool.submit(work, n, d) for n, d in source.read(set(names))]
    for f in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                  desc="Preprocessing LFW", unit="img", leave=False):
      f.result()
  if len(futures) != len(names):
    raise ValueError(f"{source.path} lacks {len(names) - len(futures)} of the listed images.")
  return out


def load(config) -> dict[str, np.ndarray]:
  """Loads the preprocessed LFW splits (uint8 NHWC), using the cache.

  Args:
    config: ``config.data`` with ``dir``, ``variant``, ``resize``, ``crop``,
      ``split`` (ordered sizes: counts, or fractions of the 13,233 images),
      ``split_seed``, ``download``, ``cache_dir`` and optionally ``mode``
      ("RGB", the default, or "L").

  Returns:
    ``{split: [N, crop, crop, 3] uint8}`` (``[..., 1]`` for mode "L").
  """
  mode = preprocess.check_mode(config.get("mode", "RGB"))
  sizes = dict(config.split)
  if config.variant == "tfds":
    # TFDS's `lfw` (the original variant), read like any prepared TFDS dataset:
    # checked to be prepared (no download), fingerprinted and cached there.
    from jax_dae.data import tfds_source

    return tfds_source.load_builder(
        "lfw", data_dir=config.get("tfds_data_dir", "") or None, image_key="image", mode=mode,
        resize=config.resize, crop=config.crop, background=255, split=sizes, split_from=None,
        split_seed=config.split_seed, cache_dir=config.get("cache_dir", "") or None)
  preset = preset_of(mode, config.resize, config.crop)
  source = _Source(
      find_source(config.dir, config.variant, allow_download=config.download, preset=preset)
  )
  params = {
      "source": source.fingerprint(),
      "variant": config.variant,
      "resize": config.resize,
      "crop": config.crop,
      "split": sizes,
      "split_seed": config.split_seed,
  }
  if mode != "RGB":  # RGB entries keep the keys they had before modes existed.
    params["mode"] = mode

  def build() -> dict[str, np.ndarray]:
    names = source.names
    counts = {s: splits.count(n, len(names), split=s) for s, n in sizes.items()}
    indices = splits.split_indices(len(names), counts, config.split_seed)
    wanted = sorted({names[i] for idx in indices.values() for i in idx})
    images = _decode_all(source, wanted, config.resize, config.crop, mode)
    row = {name: r for r, name in enumerate(wanted)}
    return {s: images[[row[names[i]] for i in idx]] for s, idx in indices.items()}

  return cache.cached_splits("lfw", params, build, config.cache_dir or None)
