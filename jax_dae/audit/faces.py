"""A run's LFW faces with their identities: the test split and any other photo.

A run's ``config.json`` fixes its data: LFW variant, resize, crop, colour mode,
split sizes and split seed. ``RunFaces`` rebuilds exactly the run's test split
(``jax_dae.data.load``, from the on-disk cache the run made) and the name of
each of its images, by the same steps as ``jax_dae.data.lfw.load``: the sorted
member names of the source, cut by ``splits.split_indices``. It checks the
pairing on decoded images (the first and last test image are decoded from the
source and must equal the cached ones) so that a change of the split logic
cannot silently give faces wrong names. Photos outside the run's splits (the
gallery may need them) are decoded and preprocessed as the run's pipeline does.

An LFW member name is ``<folder>/<Name>/<Name>_NNNN.jpg``; the identity is the
file name without the ``_NNNN`` counter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from jax_dae import data as data_lib
from jax_dae.data import lfw, preprocess, splits

# Fields of config.data that decide the test split's images and names.
DATA_FIELDS = ("name", "variant", "resize", "crop", "mode", "split", "split_seed")


def identity_of(name: str) -> str:
  """The person in an LFW file name: ``"x/Jo_Bo/Jo_Bo_0001.jpg"`` -> ``"Jo_Bo"``."""
  stem = Path(name).stem
  person, sep, number = stem.rpartition("_")
  if not sep or not number.isdigit():
    raise ValueError(f"{name} is not an LFW file name (<Name>_<NNNN>.jpg).")
  return person


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The run's ``config.json``.

  Raises:
    FileNotFoundError: the workdir has no ``config.json``.
  """
  path = Path(workdir).expanduser() / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: --workdir must be a run folder written by "
                            "python -m jax_dae.main.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def data_signature(config: ml_collections.ConfigDict) -> str:
  """The fields that decide the test split, as a string (runs with equal ones share faces)."""
  d = config.data
  values = {k: (dict(d[k]) if k == "split" else d.get(k)) for k in DATA_FIELDS}
  values["mode"] = values["mode"] or "RGB"
  return json.dumps(values, sort_keys=True)


class RunFaces:
  """The LFW faces of a run's data configuration.

  Args:
    config: the run's config (``read_config``).
    data_dir: where the LFW files are, overriding ``config.data.dir`` (which is
      relative to where the run was started); ``None`` keeps it.
    cache_dir: overrides ``config.data.cache_dir`` when given.

  Raises:
    ValueError: the run is not on LFW (its identities are needed), or the
      rebuilt names do not match the cached images.
    jax_dae.data.DataMissingError: the LFW files are not found.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, data_dir: str | None = None,
               cache_dir: str | None = None):
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    if data_config.name != "lfw" or data_config.variant == "tfds":
      raise ValueError(
          f"the privacy audit needs face identities, which it reads from LFW file names; this "
          f"run's data is config.data.name={data_config.name!r}, "
          f"variant={data_config.get('variant')!r} (needs name='lfw' and a file variant).")
    if data_dir:
      data_config.dir = data_dir
    if cache_dir is not None:
      data_config.cache_dir = cache_dir
    data_config.download = False
    self.config = data_config
    self.mode = preprocess.check_mode(data_config.get("mode", "RGB"))
    preset = lfw.preset_of(self.mode, data_config.resize, data_config.crop)
    # lfw._Source is the loader's own reader (archive, folder or carry form):
    # using it keeps names, order and a carry form's placement identical.
    self._source = lfw._Source(lfw.find_source(data_config.dir, data_config.variant,
                                               allow_download=False, preset=preset))
    self.names: list[str] = list(self._source.names)
    self.identities: list[str] = [identity_of(n) for n in self.names]
    sizes = dict(data_config.split)
    counts = {s: splits.count(n, len(self.names), split=s) for s, n in sizes.items()}
    self.split_rows: dict[str, np.ndarray] = splits.split_indices(
        len(self.names), counts, data_config.split_seed)
    if "test" not in self.split_rows:
      raise ValueError(f"the run has no test split (config.data.split: {sizes}).")
    self._splits = data_lib.load(data_config)
    self._where = {int(row): (split, i) for split, rows in self.split_rows.items()
                   for i, row in enumerate(rows)}
    self._check_pairing()

  @property
  def test_rows(self) -> np.ndarray:
    """Rows of ``names`` in the order of the test split."""
    return self.split_rows["test"]

  def test_images(self) -> np.ndarray:
    """The test split, ``[N, crop, crop, C]`` uint8, as the run evaluated it."""
    return np.asarray(self._splits["test"])

  def images(self, rows: Sequence[int]) -> np.ndarray:
    """Photos ``names[rows]`` preprocessed as the run's pipeline does, uint8.

    Rows inside the run's splits come from its cache; the others are decoded
    from the LFW source.
    """
    rows = [int(r) for r in rows]
    crop, channels = self.config.crop, preprocess.channels(self.mode)
    out = np.zeros((len(rows), crop, crop, channels), np.uint8)
    missing: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
      if row in self._where:
        split, i = self._where[row]
        out[k] = self._splits[split][i]
      else:
        missing.setdefault(self.names[row], []).append(k)
    if missing:
      for name, pixels in self._decode(set(missing)).items():
        for k in missing[name]:
          out[k] = pixels
    return out

  def _decode(self, names: set[str]) -> dict[str, np.ndarray]:
    source, out = self._source, {}
    for name, data in source.read(names):
      image = preprocess.decode(data, mode=self.mode, name=f"{source.path}:{name}")
      out[name] = preprocess.resize_center_crop(
          image, resize=self.config.resize, crop=self.config.crop, origin=source.origin,
          full_size=source.full_size)
    if len(out) != len(names):
      raise ValueError(f"{source.path} lacks {len(names) - len(out)} of the gallery photos.")
    return out

  def _check_pairing(self) -> None:
    test = self.test_rows
    if not len(test):
      raise ValueError("the run's test split is empty.")
    probe = {self.names[test[0]]: 0, self.names[test[-1]]: len(test) - 1}
    decoded = self._decode(set(probe))
    for name, i in probe.items():
      if decoded[name].reshape(-1).tobytes() != np.asarray(
          self._splits["test"][i]).reshape(-1).tobytes():
        raise ValueError(
            f"test image {i} of the cached split is not {name} decoded again: the audit's copy "
            "of the split logic (jax_dae.audit.faces) no longer matches jax_dae.data.lfw.")
