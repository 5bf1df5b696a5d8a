"""Any folder of images (seed 001's "any 64x64 image folder", users' own data).

``config.data.dir`` is searched recursively for ``EXTENSIONS`` (case does not
matter; names starting with "." are skipped, other files are ignored).
Images are converted by ``config.data.mode`` ("RGB" or "L"; alpha composited
over ``config.data.background``, default white) and sized by
``config.data.resize`` / ``config.data.crop`` (``0`` skips a step; see
``preprocess``).

Splits: if the folder has top-level subfolders named ``train``, ``val`` (or
``validation``/``valid``) or ``test``, each is a source split and files
outside them are ignored; otherwise all images form the single pool
``"all"``. ``config.data.split`` and ``split_from`` cut output splits from
these pools by ``split_seed`` (see ``splits``); a fraction ``1.0`` takes a
whole pool. The split is made over the file list, before decoding.

Bad input: an empty or missing folder raises ``DataMissingError``. A file that
does not decode (truncated, not an image), has a mode with no defined
conversion, or whose size differs from the others (without a crop) or is
smaller than the crop raises ``preprocess.BadImageError`` naming the file,
the reason and the way out; with ``config.data.skip_bad_files=True`` such
files are left out of their split instead, and their count and names are
logged and stored in the cache manifest (``extra.skipped``).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
from absl import logging

from jax_dae.data import cache, download, preprocess, splits

EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pnm", ".pbm", ".webp", ".bmp")
SPLIT_FOLDERS = ("train", "val", "validation", "valid", "test")
# How many bad file names a message or log line lists.
_LIST_AT_MOST = 10


def scan(root: str | Path) -> dict[str, list[str]]:
  """Lists the images under ``root`` by pool (relative paths, sorted).

  Returns:
    ``{subfolder: files}`` for the split subfolders that hold images, or
    ``{"all": files}`` when there are none.

  Raises:
    DataMissingError: ``root`` is missing or holds no images.
  """
  root = Path(root).expanduser()
  if not root.is_dir():
    raise download.DataMissingError(
        f"Image folder {root.resolve()} does not exist: set --config.data.dir to the folder "
        "that holds your images."
    )
  files = sorted(
      str(p.relative_to(root)) for p in root.rglob("*")
      if p.suffix.lower() in EXTENSIONS and p.is_file()
      and not any(part.startswith(".") for part in p.relative_to(root).parts)
  )
  if not files:
    raise download.DataMissingError(
        f"No images ({', '.join(EXTENSIONS)}) found under {root.resolve()}: put image files "
        "there (subfolders are searched; top-level train/, val/ and test/ become splits), or "
        "set --config.data.dir to the folder that holds them."
    )
  pools: dict[str, list[str]] = collections.defaultdict(list)
  for f in files:
    top = Path(f).parts[0]
    if len(Path(f).parts) > 1 and top.lower() in SPLIT_FOLDERS:
      pools[top.lower()].append(f)
  if not pools:
    return {"all": files}
  ignored = len(files) - sum(len(v) for v in pools.values())
  if ignored:
    logging.warning("%s has split subfolders (%s); ignoring %d images outside them.", root,
                    ", ".join(pools), ignored)
  return dict(pools)


def read_images(
    root: str | Path,
    relpaths: list[str],
    *,
    mode: str,
    resize: int,
    crop: int,
    background: int = 255,
    skip_bad_files: bool = False,
    shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """Decodes and preprocesses files with all local cores.

  Args:
    root: the image folder.
    relpaths: files to read, in output order.
    mode, resize, crop, background: preprocessing policy (``preprocess``).
    skip_bad_files: leave bad files out instead of raising.
    shape: the expected ``[H, W, C]`` of every image; ``None`` takes the most
      common one (with a crop it is always ``[crop, crop, C]``).

  Returns:
    ``(images [N, H, W, C] uint8, bad)`` where ``bad`` lists ``(relpath,
    reason)`` of the skipped files, in ``relpaths`` order.

  Raises:
    preprocess.BadImageError: a bad file and ``skip_bad_files`` is False; the
      message names the first bad file, the reason, and how many there are.
  """
  root = Path(root)

  def work(rel: str) -> np.ndarray:
    try:
      data = (root / rel).read_bytes()
    except OSError as e:
      raise preprocess.BadImageError(f"Cannot read {root / rel}: {e}") from None
    image = preprocess.decode(data, mode=mode, name=str(root / rel), background=background)
    return preprocess.fit(image, resize=resize, crop=crop, name=str(root / rel))

  results: dict[str, np.ndarray | str] = {}
  for (rel,), result in preprocess.parallel_map(work, [(r,) for r in relpaths],
                                                desc=f"Preprocessing {root.name}"):
    if isinstance(result, preprocess.BadImageError):
      results[rel] = str(result)
    elif isinstance(result, BaseException):
      raise result
    else:
      results[rel] = result
  good = [r for r in relpaths if not isinstance(results[r], str)]
  if shape is None and crop:
    shape = (crop, crop, preprocess.channels(mode))
  if shape is None and good:
    # The most common shape; ties go to the one met first (Counter keeps insertion order).
    shape = collections.Counter(results[r].shape for r in good).most_common(1)[0][0]
  for r in good:
    if results[r].shape != tuple(shape):
      h, w = results[r].shape[:2]
      results[r] = (
          f"Image {root / r} is {w}x{h} after preprocessing, but the other images are "
          f"{shape[1]}x{shape[0]}; set config.data.crop (and resize) so that all images "
          "come out the same size, or remove the file."
      )
  bad = [(r, results[r]) for r in relpaths if isinstance(results[r], str)]
  if bad and not skip_bad_files:
    names = _names([r for r, _ in bad])
    raise preprocess.BadImageError(
        f"{bad[0][1]} ({len(bad)} bad file(s) in all: {names}). Fix or delete them, or set "
        "--config.data.skip_bad_files=True to leave them out."
    )
  kept = [results[r] for r in relpaths if not isinstance(results[r], str)]
  if kept:
    images = np.stack(kept)
  else:
    images = np.zeros((0, *(shape or (0, 0, preprocess.channels(mode)))), np.uint8)
  return images, bad


def _names(items: list[str], sep: str = ", ") -> str:
  return sep.join(items[:_LIST_AT_MOST]) + (" ..." if len(items) > _LIST_AT_MOST else "")


def _log_skipped(root, skipped: list[list[str]]) -> None:
  if skipped:
    logging.warning(
        "Skipped %d bad image file(s) in %s (config.data.skip_bad_files=True): %s", len(skipped),
        root, _names([f"{r} ({why})" for r, why in skipped], sep="; "),
    )


def load(config) -> dict[str, np.ndarray]:
  """Loads splits of an image folder (uint8 NHWC), using the cache.

  Args:
    config: ``config.data`` with ``dir``, ``split``, ``split_seed``,
      ``cache_dir`` and optionally ``mode`` ("RGB"), ``resize`` (0), ``crop``
      (0), ``background`` (255), ``split_from``, ``skip_bad_files`` (False).

  Returns:
    ``{split: [N, H, W, C] uint8}``.
  """
  mode = preprocess.check_mode(config.get("mode", "RGB"))
  resize, crop = int(config.get("resize", 0)), int(config.get("crop", 0))
  if resize < 0 or crop < 0 or (resize and crop > resize):
    raise ValueError(f"config.data.resize={resize} and crop={crop}: both must be >= 0 and the "
                     "crop at most the resize (0 skips a step).")
  background = int(config.get("background", 255))
  if not 0 <= background <= 255:
    raise ValueError(f"config.data.background={background} must be a gray level in 0..255.")
  skip_bad = bool(config.get("skip_bad_files", False))
  root = Path(config.dir).expanduser()
  pools = scan(root)
  split = dict(config.split)
  split_from = dict(config.get("split_from", None) or {}) or None
  params = {
      "source": cache.files_fingerprint(root, [f for v in pools.values() for f in v]),
      "mode": mode, "resize": resize, "crop": crop, "background": background,
      "split": split, "split_from": split_from, "split_seed": config.split_seed,
      "skip_bad_files": skip_bad,
  }
  skipped: list[list[str]] = []

  def build() -> dict[str, np.ndarray]:
    assignment = splits.resolve({p: len(v) for p, v in pools.items()}, split, split_from,
                                config.split_seed)
    out, shape = {}, None
    for s, (pool, idx) in assignment.items():
      files = [pools[pool][i] for i in idx]
      out[s], bad = read_images(root, files, mode=mode, resize=resize, crop=crop,
                                background=background, skip_bad_files=skip_bad, shape=shape)
      shape = shape or (out[s].shape[1:] if len(out[s]) else None)
      skipped.extend([r, why] for r, why in bad)
      if bad:
        logging.warning("Split %s: %d of %d images (%d skipped).", s, len(out[s]), len(files),
                        len(bad))
    _log_skipped(root, skipped)
    return out

  name = "folder-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name)
  arrays = cache.cached_splits(name, params, build, config.get("cache_dir", "") or None,
                               extra=lambda: {"skipped": skipped})
  if not skipped:  # Reused: report what was skipped when the entry was built.
    manifest = cache.read_manifest(name, params, config.get("cache_dir", "") or None) or {}
    _log_skipped(root, manifest.get("extra", {}).get("skipped", []))
  return arrays
