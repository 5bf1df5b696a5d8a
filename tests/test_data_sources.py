"""Data sources on real files (MNIST IDX, LFW), image folders, TFDS, and the cache."""

import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jax_dae import data
from jax_dae.data import cache, folder, lfw, mnist, preprocess, splits

SHARED_DATA = Path(
    os.environ.get("JAX_DAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
needs_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST files not in {SHARED_DATA}/mnist (set JAX_DAE_SHARED_DATA)",
)
needs_lfw = pytest.mark.skipif(
    not (SHARED_DATA / "lfw-deepfunneled.tgz").is_file(),
    reason=f"real LFW archive not in {SHARED_DATA} (set JAX_DAE_SHARED_DATA)",
)


def make_config(tmp_path, **fields) -> ml_collections.ConfigDict:
  base = {"split_seed": 0, "download": False, "cache_dir": str(tmp_path / "cache")}
  return ml_collections.ConfigDict(base | fields)


# ---------------------------------------------------------------------------
# MNIST, from the real IDX files.
# ---------------------------------------------------------------------------


@needs_mnist
def test_mnist_idx_headers_counts_and_pixel_statistics():
  files = mnist.find_files(SHARED_DATA, allow_download=False)  # Checks the official sha256.
  train = mnist.read_idx_images(files["train"])
  test = mnist.read_idx_images(files["test"])
  assert train.shape == (60000, 28, 28) and test.shape == (10000, 28, 28)
  assert train.dtype == np.uint8
  # Exact mean and std of the whole training set from its histogram.
  hist = np.bincount(train.ravel(), minlength=256).astype(np.float64)
  values = np.arange(256) / 255.0
  mean = (hist * values).sum() / hist.sum()
  std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum())
  assert mean == pytest.approx(0.1307, abs=5e-5)
  assert std == pytest.approx(0.3081, abs=5e-5)


@needs_mnist
def test_mnist_seed003_split_and_small_split(tmp_path):
  config = make_config(tmp_path, name="mnist", dir=str(SHARED_DATA),
                       split=mnist.SEED_003_SPLIT)
  out = data.load(config)
  assert {s: a.shape for s, a in out.items()} == {
      "train": (48000, 28, 28, 1), "val": (12000, 28, 28, 1), "test": (10000, 28, 28, 1)}
  assert all(a.dtype == np.uint8 for a in out.values())
  test = mnist.read_idx_images(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz")
  np.testing.assert_array_equal(out["test"][..., 0], test)  # Official test set, in order.
  # train and val partition the official training set.
  parts = splits.resolve({"train": 60000, "test": 10000}, config.split,
                         {"train": "train", "val": "train", "test": "test"}, 0)
  together = np.concatenate([parts["train"][1], parts["val"][1]])
  np.testing.assert_array_equal(np.sort(together), np.arange(60000))
  train = mnist.read_idx_images(SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz")
  np.testing.assert_array_equal(out["val"][..., 0], train[parts["val"][1]])
  # A small split for smoke runs.
  small = data.load(make_config(tmp_path, name="mnist", dir=str(SHARED_DATA),
                                split={"train": 300, "val": 100, "test": 50}))
  assert {s: len(a) for s, a in small.items()} == {"train": 300, "val": 100, "test": 50}


def test_mnist_missing_file_names_it_and_the_folder(tmp_path):
  config = make_config(tmp_path, name="mnist", dir=str(tmp_path / "data"),
                       split=mnist.SEED_003_SPLIT)
  with pytest.raises(data.DataMissingError) as e:
    data.load(config)
  assert "train-images-idx3-ubyte.gz" in str(e.value)
  assert str((tmp_path / "data" / "mnist").resolve()) in str(e.value)
  assert "ossci-datasets" in str(e.value)  # Where to download it by hand.


def test_mnist_rejects_a_file_that_is_not_the_official_one(tmp_path):
  (tmp_path / "mnist").mkdir()
  for spec in mnist.FILES.values():
    (tmp_path / "mnist" / spec.name).write_bytes(b"not mnist")
  with pytest.raises(ValueError, match="not the official MNIST file"):
    mnist.find_files(tmp_path, allow_download=False)


def test_mnist_tfds_variant_says_how_to_prepare_it(tmp_path):
  config = make_config(tmp_path, name="mnist", variant="tfds",
                       tfds_data_dir=str(tmp_path / "tfds"), split=mnist.SEED_003_SPLIT)
  with pytest.raises(data.DataMissingError, match="'mnist' is not prepared"):
    data.load(config)
  assert not (tmp_path / "tfds" / "downloads").exists()  # Nothing was downloaded.


# ---------------------------------------------------------------------------
# LFW faces: grayscale 100x100 (seed 002) and RGB 64x64 (seed 001).
# ---------------------------------------------------------------------------


def _lfw_member(name: str) -> bytes:
  """One image's bytes, streaming the archive only up to it."""
  with tarfile.open(SHARED_DATA / "lfw-deepfunneled.tgz", "r|gz") as tar:
    for member in tar:
      if member.name == name:
        return tar.extractfile(member).read()
  raise KeyError(name)


@needs_lfw
def test_lfw_gray100_and_rgb64_faces(tmp_path):
  split = {"test": 12, "val": 6, "train": 20}
  out = {}
  for preset in ("gray100", "rgb64"):
    config = make_config(tmp_path, name="lfw", dir=str(SHARED_DATA), variant="deepfunneled",
                         split=split, **lfw.PRESETS[preset])
    out[preset] = data.load(config)
  side = {"gray100": (100, 1), "rgb64": (64, 3)}
  for preset, arrays in out.items():
    size, channels = side[preset]
    assert {s: a.shape for s, a in arrays.items()} == {
        s: (n, size, size, channels) for s, n in split.items()}
    assert all(a.dtype == np.uint8 and 40 < a.mean() < 200 for a in arrays.values())
  # One image against an independent decode of the same file.
  # The image names, from the per-image checksum list beside the archive.
  lines = (SHARED_DATA / "lfw-deepfunneled.sha256").read_text().splitlines()
  names = sorted(line.split(maxsplit=1)[1].lstrip("*") for line in lines)
  assert len(names) == lfw.NUM_IMAGES
  # ConfigDict lists split keys sorted; the first test image is the earliest in the archive.
  first = splits.split_indices(len(names), dict(sorted(split.items())), 0)["test"][0]
  original = Image.open(io.BytesIO(_lfw_member(names[first])))
  assert original.size == (250, 250) and original.mode == "RGB"
  gray = np.asarray(original.convert("L").resize((100, 100), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(out["gray100"]["test"][0, ..., 0], gray)
  rgb = np.asarray(original.resize((64, 64), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(out["rgb64"]["test"][0], rgb)


# ---------------------------------------------------------------------------
# Image folders: formats, modes, bad files, splits.
# ---------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, fmt: str, mode: str | None = None, **kw) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode=mode).save(path, fmt, **kw) if mode else Image.fromarray(
      array).save(path, fmt, **kw)


def _mixed_folder(root: Path) -> dict[str, np.ndarray]:
  """One image per format and mode; returns the arrays that were written."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
  rgba[:, :16, 3] = 0  # Left half fully transparent.
  rgba[:, 16:, 3] = 255
  gray = rng.integers(0, 256, (36, 36), dtype=np.uint8)
  gray16 = (rng.integers(0, 65536, (24, 24))).astype(np.uint16)
  webp = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
  _save(root / "a_rgb.jpg", rgb, "JPEG", quality=95)
  _save(root / "nested" / "deeper" / "b_rgba.png", rgba, "PNG")
  _save(root / "c_gray.pgm", gray, "PPM")
  (root / "d_gray16.pgm").write_bytes(b"P5\n24 24\n65535\n" + gray16.astype(">u2").tobytes())
  _save(root / "nested" / "e_rgb.webp", webp, "WEBP", lossless=True)
  (root / "README.txt").write_text("not an image, ignored by extension")
  (root / ".hidden").mkdir()
  _save(root / ".hidden" / "skipped.png", rgb, "PNG")
  return {"rgb": rgb, "rgba": rgba, "gray": gray, "gray16": gray16, "webp": webp}


def test_folder_mixed_formats_and_modes(tmp_path):
  root = tmp_path / "images"
  written = _mixed_folder(root)
  assert folder.scan(root) == {"all": ["a_rgb.jpg", "c_gray.pgm", "d_gray16.pgm",
                                       "nested/deeper/b_rgba.png", "nested/e_rgb.webp"]}
  config = make_config(tmp_path, name="folder", dir=str(root), mode="RGB", resize=16, crop=16,
                       split={"train": 1.0})
  rgb = data.load(config)["train"]
  assert rgb.shape == (5, 16, 16, 3) and rgb.dtype == np.uint8
  by_name = dict(zip(folder.scan(root)["all"], rgb, strict=True))
  # Grayscale files come out with three equal channels.
  for name in ("c_gray.pgm", "d_gray16.pgm"):
    assert (by_name[name][..., 0] == by_name[name][..., 2]).all()
  # RGBA: transparent pixels composited on white; opaque pixels keep their colour.
  assert (by_name["nested/deeper/b_rgba.png"][:, :7] == 255).all()
  direct = np.asarray(Image.fromarray(written["rgba"][..., :3]).resize((16, 16),
                                                                       Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(by_name["nested/deeper/b_rgba.png"][:, 9:], direct[:, 9:])
  # 16-bit PGM scaled to 8 bits.
  gray16 = preprocess.decode((root / "d_gray16.pgm").read_bytes(), mode="L", name="x",
                             background=255)
  np.testing.assert_array_equal(np.asarray(gray16),
                                np.round(written["gray16"] * (255 / 65535)).astype(np.uint8))
  # Lossless WebP round-trips exactly at native size (resize/crop 0).
  native = preprocess.fit(preprocess.decode((root / "nested/e_rgb.webp").read_bytes(),
                                            mode="RGB", name="x", background=255),
                          resize=0, crop=0)
  np.testing.assert_array_equal(native, written["webp"])
  gray_config = make_config(tmp_path, name="folder", dir=str(root), mode="L", resize=16, crop=16,
                            split={"train": 1.0}, background=0)
  gray = data.load(gray_config)["train"]
  assert gray.shape == (5, 16, 16, 1)
  assert (dict(zip(folder.scan(root)["all"], gray, strict=True))[
      "nested/deeper/b_rgba.png"][:, :7] == 0).all()  # Black background this time.


def _break_files(root: Path) -> None:
  good = io.BytesIO()
  Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(good, "JPEG")
  (root / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
  (root / "nested" / "not_an_image.png").write_text("hello, I am text")


def test_folder_bad_files_error_names_them_and_skip_mode_counts_them(tmp_path, caplog):
  root = tmp_path / "images"
  _mixed_folder(root)
  _break_files(root)
  config = make_config(tmp_path, name="folder", dir=str(root), resize=16, crop=16,
                       split={"train": 1.0})
  with pytest.raises(data.BadImageError) as e:
    data.load(config)
  message = str(e.value)
  assert "2 bad file(s)" in message
  assert "not_an_image.png" in message and "truncated.jpg" in message
  assert "skip_bad_files=True" in message
  assert not list((tmp_path / "cache").glob("folder-*"))  # Nothing cached.

  config.skip_bad_files = True
  caplog.set_level(logging.WARNING)
  images = data.load(config)["train"]
  assert images.shape == (5, 16, 16, 3)
  assert "Skipped 2 bad image file(s)" in caplog.text and "truncated.jpg" in caplog.text
  manifest = json.loads(next((tmp_path / "cache").glob("folder-*/manifest.json")).read_text())
  assert sorted(r for r, _ in manifest["extra"]["skipped"]) == ["nested/not_an_image.png",
                                                                "truncated.jpg"]
  caplog.clear()
  data.load(config)  # From the cache: the skipped files are reported again.
  assert "Skipped 2 bad image file(s)" in caplog.text


def test_folder_unexpected_size_and_mode(tmp_path):
  root = tmp_path / "images"
  for i in range(3):
    _save(root / f"ok{i}.png", np.full((10, 10), 50 * i, np.uint8), "PNG")
  _save(root / "odd.png", np.zeros((12, 10), np.uint8), "PNG")
  config = make_config(tmp_path, name="folder", dir=str(root), mode="L", resize=0, crop=0,
                       split={"train": 1.0})
  with pytest.raises(data.BadImageError, match=r"odd.png is 10x12 .* other images are 10x10"):
    data.load(config)
  config.skip_bad_files = True
  assert data.load(config)["train"].shape == (3, 10, 10, 1)
  with pytest.raises(data.BadImageError, match="smaller than config.data.crop=11"):
    folder.read_images(root, ["ok0.png"], mode="L", resize=0, crop=11)
  with pytest.raises(data.BadImageError, match="mode 'F'"):
    preprocess.convert(Image.new("F", (4, 4)), mode="L", name="float.tif")


def test_folder_empty_or_missing_says_what_to_do(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images")
  with pytest.raises(data.DataMissingError, match="No images .* found under .*empty"):
    data.load(make_config(tmp_path, name="folder", dir=str(tmp_path / "empty"),
                          split={"train": 1.0}))
  with pytest.raises(data.DataMissingError, match="does not exist"):
    data.load(make_config(tmp_path, name="folder", dir=str(tmp_path / "nope"),
                          split={"train": 1.0}))


def test_folder_splits_by_seed_or_by_subfolder(tmp_path):
  flat = tmp_path / "flat"
  for i in range(20):
    _save(flat / f"{i:02d}.png", np.full((4, 4), i, np.uint8), "PNG")
  split = {"train": 0.5, "val": 6, "test": 4}
  load = lambda seed: data.load(make_config(tmp_path, name="folder", dir=str(flat), mode="L",
                                            split=split, split_seed=seed))
  a, b, c = load(0), load(0), load(1)
  assert {s: len(x) for s, x in a.items()} == {"train": 10, "val": 6, "test": 4}
  values = np.concatenate([a[s][:, 0, 0, 0] for s in a])
  assert sorted(values) == list(range(20))  # Disjoint and complete.
  assert all(np.array_equal(a[s], b[s]) for s in a)
  assert not all(np.array_equal(a[s], c[s]) for s in a)

  nested = tmp_path / "nested"
  for sub, n in (("train", 5), ("validation", 3), ("test", 2)):
    for i in range(n):
      _save(nested / sub / "x" / f"{i}.png", np.full((4, 4), 10 * len(sub) + i, np.uint8), "PNG")
  _save(nested / "stray.png", np.zeros((4, 4), np.uint8), "PNG")
  assert sorted(folder.scan(nested)) == ["test", "train", "validation"]
  out = data.load(make_config(tmp_path, name="folder", dir=str(nested), mode="L",
                              split={"train": 1.0, "val": 1.0, "test": 1.0}))
  assert {s: len(x) for s, x in out.items()} == {"train": 5, "val": 3, "test": 2}
  assert set(out["val"][:, 0, 0, 0]) == {100, 101, 102}
  # A seeded split of one subfolder instead.
  out = data.load(make_config(tmp_path, name="folder", dir=str(nested), mode="L",
                              split={"train": 3, "val": 2},
                              split_from={"train": "train", "val": "train"}))
  assert {s: len(x) for s, x in out.items()} == {"train": 3, "val": 2}


# ---------------------------------------------------------------------------
# TFDS, with a tiny dataset prepared here (array_record; TensorFlow not needed).
# ---------------------------------------------------------------------------


def _prepare_tiny_tfds(data_dir: Path) -> dict[str, np.ndarray]:
  import tensorflow_datasets as tfds

  rng = np.random.default_rng(0)
  arrays = {"train": rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8),
            "test": rng.integers(0, 256, (5, 10, 10, 3), dtype=np.uint8)}

  def png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()

  class TinyFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(10, 10, 3)), "id": tfds.features.Scalar(np.int64)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in arrays}

    def _generate_examples(self, split):
      for i, a in enumerate(arrays[split]):
        yield i, {"image": png(a), "id": i}  # Encoded bytes: no TensorFlow needed.

  TinyFaces(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return arrays


def test_tfds_data_source_with_a_tiny_prepared_dataset(tmp_path):
  tfds_dir = tmp_path / "tfds"
  arrays = _prepare_tiny_tfds(tfds_dir)
  config = make_config(tmp_path, name="tfds", tfds_name="tiny_faces", tfds_data_dir=str(tfds_dir),
                       mode="RGB", resize=0, crop=0, split={"train": 1.0, "test": 1.0})
  out = data.load(config)
  rows = lambda a: sorted(x.tobytes() for x in a)  # TFDS stores examples in hashed-key order.
  for s in ("train", "test"):  # Whole source splits, pixel for pixel.
    assert out[s].shape == arrays[s].shape and rows(out[s]) == rows(arrays[s])
  # A seeded train/val split of the source's train split, grayscale and cropped.
  config = make_config(tmp_path, name="tfds", tfds_name="tiny_faces", tfds_data_dir=str(tfds_dir),
                       mode="L", resize=8, crop=6, split={"train": 8, "val": 4, "test": 1.0})
  out = data.load(config)
  assert {s: a.shape for s, a in out.items()} == {
      "train": (8, 6, 6, 1), "val": (4, 6, 6, 1), "test": (5, 6, 6, 1)}
  with pytest.raises(data.DataMissingError, match="'no_such_set' not found"):
    data.load(make_config(tmp_path, name="tfds", tfds_name="no_such_set",
                          tfds_data_dir=str(tfds_dir), split={"train": 1.0}))


# ---------------------------------------------------------------------------
# The cache.
# ---------------------------------------------------------------------------


def test_cache_rebuilds_when_a_parameter_or_the_content_changes(tmp_path):
  root = tmp_path / "images"
  for i in range(6):
    _save(root / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8), "PNG")
  config = make_config(tmp_path, name="folder", dir=str(root), resize=8, crop=8,
                       split={"train": 1.0})
  entries = lambda: sorted(p.name for p in (tmp_path / "cache").glob("folder-*"))
  assert data.load(config)["train"].shape == (6, 8, 8, 3)
  first = entries()
  data.load(config)
  assert entries() == first  # Reused.
  config.crop = 4
  assert data.load(config)["train"].shape == (6, 4, 4, 3)
  assert len(entries()) == 2  # A preprocessing change gives a new entry.
  config.crop = 8
  _save(root / "3.png", np.full((8, 8, 3), 7, np.uint8), "PNG")
  os.utime(root / "3.png", ns=(1, 1))  # A content change, even with an old mtime.
  assert data.load(config)["train"][3, 0, 0, 0] == 7
  assert len(entries()) == 3

  builds = []

  def build():
    builds.append(1)
    return {"train": np.zeros((2, 2, 2, 1), np.uint8)}

  cache.cached_splits("x", {"a": 1}, build, tmp_path / "c2")
  cache.cached_splits("x", {"a": 1}, build, tmp_path / "c2")
  cache.cached_splits("x", {"a": 2}, build, tmp_path / "c2")
  assert len(builds) == 2


def test_half_written_cache_entries_are_never_used(tmp_path, monkeypatch):
  params = {"source": "s", "crop": 4}
  good = {"train": np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)}
  builds = []

  def build():
    builds.append(1)
    return good

  entry = cache.entry_path("t", params, tmp_path)
  # 1. A leftover temporary folder of a killed run, with junk in it.
  (tmp_path / f".{entry.name}.abc123").mkdir(parents=True)
  np.save(tmp_path / f".{entry.name}.abc123" / "train.npy", np.ones((1, 4, 4, 1), np.uint8))
  out = cache.cached_splits("t", params, build, tmp_path)
  assert len(builds) == 1 and np.array_equal(out["train"], good["train"])
  # 2. The entry folder without its manifest (e.g. an interrupted copy).
  shutil.rmtree(entry)
  entry.mkdir()
  np.save(entry / "train.npy", np.ones((1, 4, 4, 1), np.uint8))
  out = cache.cached_splits("t", params, build, tmp_path)
  assert len(builds) == 2 and np.array_equal(out["train"], good["train"])
  # 3. A manifest whose split file is gone, and a manifest that is not JSON.
  (entry / "train.npy").unlink()
  out = cache.cached_splits("t", params, build, tmp_path)
  assert len(builds) == 3 and np.array_equal(out["train"], good["train"])
  (entry / "manifest.json").write_text('{"splits": ["tr')
  out = cache.cached_splits("t", params, build, tmp_path)
  assert len(builds) == 4 and np.array_equal(out["train"], good["train"])
  # 4. A run killed while writing the entry (after its first split file) leaves nothing.
  shutil.rmtree(entry)
  saved = []

  def dying_save(path, array):
    if saved:
      raise KeyboardInterrupt
    saved.append(path)
    np.lib.format.write_array(open(path, "wb"), array)

  monkeypatch.setattr(cache.np, "save", dying_save)
  with pytest.raises(KeyboardInterrupt):
    cache.cached_splits("t", params, lambda: good | {"val": good["train"]}, tmp_path)
  monkeypatch.undo()
  assert saved and not entry.exists()
  # Its temporary folder is removed too; only step 1's planted leftover remains.
  assert [p.name for p in tmp_path.iterdir()] == [f".{entry.name}.abc123"]
  cache.cached_splits("t", params, build, tmp_path)
  assert len(builds) == 5 and (entry / "manifest.json").is_file()
