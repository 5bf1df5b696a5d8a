"""Any image dataset prepared for TFDS, read through ``tfds.data_source``.

The dataset must already be prepared (``array_record`` files) under
``config.data.tfds_data_dir`` (empty: TFDS's default, ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``); nothing is downloaded or prepared here, because
TFDS's preparation of most builders needs TensorFlow and the network. Reading
needs neither: the image bytes are read with ``SkipDecoding`` and decoded
with PIL by the same policy as image folders (``preprocess``).

Config fields: ``tfds_name`` (e.g. ``"mnist"``, ``"cifar10:3.0.2"``, or a
builder the user prepared), ``tfds_data_dir``, ``image_key`` (feature holding
the image; default ``"image"``), ``mode``, ``resize``, ``crop``,
``background``, ``split``, ``split_from`` and ``split_seed`` (see
``splits``): by default an output split is cut from the source split of the
same name (``val`` also from ``validation``), else from ``train``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from jax_dae.data import cache, download, preprocess, splits


def _open_builder(name: str, data_dir: str | None):
  """The prepared builder ``name`` in ``data_dir``, or ``DataMissingError``."""
  import tensorflow_datasets as tfds  # Imported lazily: heavy, optional.

  where = data_dir or "TFDS's default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  how = (
      f"prepare it there first (e.g. `tfds build {name.split(':')[0]} --data_dir=DIR "
      "--file_format=array_record`, which needs TensorFlow), or set "
      "--config.data.tfds_data_dir to the folder that holds "
      f"{name.split(':')[0]}/<version>/"
  )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends, with long listings.
    raise download.DataMissingError(
        f"TFDS dataset {name!r} not found in {where}: {how}. ({type(e).__name__}: "
        f"{str(e).splitlines()[0]})"
    ) from None
  if not builder.is_prepared():
    raise download.DataMissingError(
        f"TFDS dataset {name!r} is not prepared in {where}: {how}."
    )
  return builder


def _fingerprint(builder) -> str:
  """Name, version and (name, size, mtime) of every file of the prepared dataset."""
  root = Path(str(builder.data_dir))
  files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
  h = hashlib.sha256(builder.info.full_name.encode())
  h.update(cache.files_fingerprint(root, files).encode())
  return h.hexdigest()


def read_images(source, indices: np.ndarray, *, image_key: str, mode: str, resize: int,
                crop: int, background: int, name: str) -> np.ndarray:
  """Decodes and preprocesses ``source[i][image_key]`` for ``i`` in ``indices``.

  Args:
    source: a random-access source of feature dicts (``len``, ``[i]``), such
      as a TFDS ``ArrayRecordDataSource`` read with ``SkipDecoding``.
    indices: which records, in output order.
    image_key: the image feature; its value is encoded bytes or an array.
    mode, resize, crop, background: the preprocessing policy (``preprocess``).
    name: the dataset's name, for error messages.

  Returns:
    ``[len(indices), H, W, C]`` uint8.
  """
  out = [None] * len(indices)

  def work(row: int, index: int) -> None:
    record = source[int(index)]
    if image_key not in record:
      raise KeyError(f"{name} has no feature {image_key!r} (it has: {', '.join(record)}); set "
                     "config.data.image_key.")
    label = f"{name}[{index}]"
    value = record[image_key]
    if isinstance(value, bytes):
      image = preprocess.decode(value, mode=mode, name=label, background=background)
    else:
      from PIL import Image

      array = np.asarray(value)
      image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
      image = preprocess.convert(image, mode=mode, background=background, name=label)
    out[row] = preprocess.fit(image, resize=resize, crop=crop, name=label)

  for _, result in preprocess.parallel_map(work, enumerate(indices), total=len(indices),
                                           desc=f"Preprocessing {name}"):
    if isinstance(result, BaseException):
      raise result
  if not out:
    return np.zeros((0, crop, crop, preprocess.channels(mode)), np.uint8)
  shapes = {a.shape for a in out}
  if len(shapes) > 1:
    raise ValueError(f"{name}: images have different sizes {sorted(shapes)[:3]}...; set "
                     "config.data.resize and config.data.crop to make them equal.")
  return np.stack(out)


def load_builder(name: str, *, data_dir: str | None, image_key: str, mode: str, resize: int,
                 crop: int, background: int, split: dict, split_from: dict | None,
                 split_seed: int, cache_dir: str | None) -> dict[str, np.ndarray]:
  """Loads splits of the prepared TFDS dataset ``name`` (uint8 NHWC), using the cache.

  Args:
    name: TFDS name, optionally with ``:version``.
    data_dir: TFDS data_dir (``None``: TFDS's default).
    image_key: the image feature.
    mode, resize, crop, background: preprocessing (``preprocess``).
    split, split_from, split_seed: output splits (``splits.resolve``).
    cache_dir: cache root (``None``: ``cache.default_cache_dir()``).

  Returns:
    ``{split: [N, H, W, C] uint8}``.
  """
  import tensorflow_datasets as tfds

  builder = _open_builder(name, data_dir)
  pool_sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
  params = {
      "source": f"tfds:{builder.info.full_name}:{_fingerprint(builder)}",
      "image_key": image_key, "mode": mode, "resize": resize, "crop": crop,
      "background": background, "split": split, "split_from": split_from,
      "split_seed": split_seed,
  }

  def build() -> dict[str, np.ndarray]:
    assignment = splits.resolve(pool_sizes, split, split_from, split_seed)
    out = {}
    for s, (pool, idx) in assignment.items():
      try:
        source = builder.as_data_source(split=pool,
                                        decoders={image_key: tfds.decode.SkipDecoding()})
      except Exception as e:
        raise download.DataMissingError(
            f"TFDS dataset {name!r} in {builder.data_dir} cannot be read as a data source "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); prepare it with "
            "--file_format=array_record."
        ) from None
      out[s] = read_images(source, idx, image_key=image_key, mode=mode, resize=resize,
                           crop=crop, background=background, name=f"{name}/{pool}")
    return out

  safe = name.replace("/", "_").replace(":", "-")
  return cache.cached_splits(f"tfds-{safe}", params, build, cache_dir)


def load(config) -> dict[str, np.ndarray]:
  """Loads a prepared TFDS image dataset named by ``config.tfds_name``.

  Args:
    config: ``config.data`` (fields in the module docstring).

  Returns:
    ``{split: [N, H, W, C] uint8}``.
  """
  name = config.get("tfds_name", "")
  if not name:
    raise ValueError("config.data.tfds_name is empty: name the TFDS dataset to read "
                     "(e.g. --config.data.tfds_name=cifar10).")
  mode = preprocess.check_mode(config.get("mode", "RGB"))
  return load_builder(
      name, data_dir=config.get("tfds_data_dir", "") or None,
      image_key=config.get("image_key", "image"), mode=mode,
      resize=config.get("resize", 0), crop=config.get("crop", 0),
      background=config.get("background", 255), split=dict(config.split),
      split_from=dict(config.get("split_from", None) or {}) or None,
      split_seed=config.get("split_seed", 0), cache_dir=config.get("cache_dir", "") or None,
  )
