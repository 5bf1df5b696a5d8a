"""LFW source: split, crop geometry, cache, missing-data message (real images)."""

import io
import itertools
import json
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jax_dae import data
from jax_dae.data import cache, lfw, preprocess, splits


def _lfw_config(data_dir, cache_dir, **split):
  return ml_collections.ConfigDict({
      "name": "lfw", "dir": str(data_dir), "variant": "deepfunneled", "resize": 224,
      "crop": 112, "split": split or {"test": 12, "val": 6, "train": 20}, "split_seed": 0,
      "download": False, "cache_dir": str(cache_dir),
  })


def test_seed_split_sizes_cover_all_images_disjointly():
  sizes = {"test": 3708, "val": 1905, "train": 7620}
  parts = splits.split_indices(lfw.NUM_IMAGES, sizes, seed=0)
  assert {k: len(v) for k, v in parts.items()} == sizes
  union = np.concatenate(list(parts.values()))
  assert len(np.unique(union)) == lfw.NUM_IMAGES == len(union)


def test_split_is_deterministic_per_seed():
  sizes = {"test": 30, "val": 20, "train": 50}
  a, b = splits.split_indices(1000, sizes, 0), splits.split_indices(1000, sizes, 0)
  c = splits.split_indices(1000, sizes, 1)
  assert all(np.array_equal(a[k], b[k]) for k in sizes)
  assert not np.array_equal(a["test"], c["test"])


def test_split_larger_than_source_names_the_field():
  with pytest.raises(ValueError, match="config.data.split"):
    splits.split_indices(10, {"train": 8, "test": 4}, 0)


def _first_lfw_images(shared_data, count):
  with tarfile.open(shared_data / "lfw-deepfunneled.tgz") as tar:
    out = []
    for member in tar:
      if member.name.endswith(".jpg"):
        out.append(tar.extractfile(member).read())
        if len(out) == count:
          return out
  return out


def test_crop_geometry_equals_resize_then_center_crop(shared_data):
  # torchvision's Resize(224) + CenterCrop(112) on a PIL image, done literally.
  for blob in _first_lfw_images(shared_data, 4):
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    assert image.size == (250, 250)
    literal = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR))[56:168, 56:168]
    ours = preprocess.resize_center_crop(image, resize=224, crop=112)
    assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - literal.astype(int)).max() <= 1
    # The carry form reads a crop of the original placed at `origin`.
    part = image.crop((48, 48, 192, 192))
    carried = preprocess.resize_center_crop(part, resize=224, crop=112, origin=(48, 48),
                                            full_size=(250, 250))
    np.testing.assert_array_equal(carried, ours)


def test_load_real_lfw_split_and_cache_reuse(shared_data, tmp_path, monkeypatch):
  config = _lfw_config(shared_data, tmp_path)
  first = data.load(config)
  assert {k: v.shape for k, v in first.items()} == {
      "test": (12, 112, 112, 3), "val": (6, 112, 112, 3), "train": (20, 112, 112, 3)}
  assert all(v.dtype == np.uint8 for v in first.values())
  assert 60 < first["train"].mean() < 180  # real faces, not blank arrays
  entries = list(tmp_path.glob("lfw-*"))
  assert len(entries) == 1

  # Second load: served from the cache without decoding anything.
  def fail(*args, **kwargs):
    raise AssertionError("the cache was rebuilt")

  monkeypatch.setattr(lfw, "_decode_all", fail)
  # ...and without listing the archive (the fingerprint is all a cache hit needs).
  monkeypatch.setattr(tarfile.TarFile, "getnames", fail)
  second = data.load(config)
  for k in first:
    np.testing.assert_array_equal(first[k], second[k])

  # A changed preprocessing parameter is a different entry.
  monkeypatch.undo()
  config.crop = 96
  assert data.load(config)["train"].shape == (20, 96, 96, 3)
  assert len(list(tmp_path.glob("lfw-*"))) == 2


def test_cache_never_reads_a_half_written_entry(tmp_path):
  params = {"x": 1}
  entry = tmp_path / f"toy-{cache.cache_key(params)}"
  entry.mkdir()
  (entry / "train.npy").write_bytes(b"torn")  # no manifest: an interrupted write
  built = cache.cached_splits("toy", params, lambda: {"train": np.ones((2, 3), np.uint8)},
                              tmp_path)
  np.testing.assert_array_equal(built["train"], np.ones((2, 3), np.uint8))


def test_missing_dataset_names_file_and_place(tmp_path):
  config = _lfw_config(tmp_path / "nowhere", tmp_path)
  with pytest.raises(data.DataMissingError) as info:
    data.load(config)
  message = str(info.value)
  assert "lfw-deepfunneled.tgz" in message
  assert str((tmp_path / "nowhere").resolve()) in message
  assert "--config.data.dir" in message


def _write_carry(path, meta, members):
  with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as tar:
    for name, blob in [(lfw.CARRY_META, json.dumps(meta).encode()), *members]:
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


def _named_lfw_images(shared_data, count):
  with tarfile.open(shared_data / "lfw-deepfunneled.tgz") as tar:
    members = itertools.islice((m for m in tar if m.name.endswith(".jpg")), count)
    return [(m.name, tar.extractfile(m).read()) for m in members]


def test_preset_carry_form_is_read_as_is_and_crop_carry_refuses_other_settings(
    shared_data, tmp_path):
  originals = _named_lfw_images(shared_data, 12)
  preset = lfw.PRESETS["gray100"]
  exact = {n: preprocess.resize_center_crop(preprocess.decode(b, mode="L", name=n), resize=100,
                                            crop=100) for n, b in originals}
  carried = {}
  for name, array in exact.items():
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0]).save(buffer, "JPEG", quality=95)
    carried[name] = buffer.getvalue()
  (tmp_path / "preset").mkdir()
  _write_carry(tmp_path / "preset" / lfw.preset_carry_name("deepfunneled", "gray100"),
               {"origin": [0, 0], "full_size": [100, 100], "preset": "gray100"},
               list(carried.items()))
  config = _lfw_config(tmp_path / "preset", tmp_path / "cache", test=4, val=2, train=6)
  config.update(preset)
  loaded = np.concatenate(list(data.load(config).values()))
  assert loaded.shape == (12, 100, 100, 1)
  # The carried JPEGs, decoded and taken as they are (no second resampling)...
  decoded = {n: np.asarray(Image.open(io.BytesIO(b)))[..., None] for n, b in carried.items()}
  assert sorted(map(bytes, loaded)) == sorted(map(bytes, decoded.values()))
  # ...which are within JPEG quality-95 error of the exact preprocessing.
  errors = [np.mean((decoded[n].astype(float) - exact[n]) ** 2) for n in exact]
  assert 10 * np.log10(255**2 / np.mean(errors)) > 40

  # Seed 000's crop form holds only the central region: a whole-frame setting is refused.
  (tmp_path / "crop").mkdir()
  crops = []
  for name, blob in originals:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(blob)).crop((48, 48, 192, 192)).save(buffer, "JPEG", quality=95)
    crops.append((name, buffer.getvalue()))
  _write_carry(tmp_path / "crop" / ("lfw-deepfunneled" + lfw.CARRY_SUFFIX),
               {"origin": [48, 48], "full_size": [250, 250]}, crops)
  config.dir = str(tmp_path / "crop")
  with pytest.raises(ValueError, match="does not hold the region.*make_lfw_carry"):
    data.load(config)
