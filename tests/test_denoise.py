"""The denoise command and its library (issue 7): sizes, modes, errors, safety.

A "trained" workdir is made in a second: config.json from lfw_cae's runlocal
config (SmallCAE at crop 32) and a freshly initialised state saved as the best
checkpoint. The plumbing does not need trained weights; the numerical checks
compare the CLI with the library and the library with the model itself.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from PIL import Image

from configs import lfw_cae
from jax_dae import checkpoint, denoise, inference, models, optimizers, steps, writers

ROOT = Path(__file__).resolve().parents[1]
BLUR = "gaussian_blur(kernel=9,sigma=4)"


def _make_workdir(path: Path, *, mode: str, seed: int):
  config = lfw_cae.get_config("runlocal")
  config.data.crop, config.data.resize = 32, 64
  config.data.mode = mode
  writers.write_json(path / "config.json", config.to_dict())
  channels = 1 if mode == "L" else 3
  model = models.from_config(config, out_channels=channels)
  state = steps.init_state(model, optimizers.create(config), (32, 32, channels),
                           jax.random.key(seed))
  ckpt = checkpoint.Checkpointer(path / "checkpoints")
  ckpt.save(1, state, metrics={"psnr": 1.0})
  ckpt.wait()
  ckpt.close()
  return path, state


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
  return _make_workdir(tmp_path_factory.mktemp("rgb_run"), mode="RGB", seed=0)


@pytest.fixture(scope="module")
def rgb_denoiser(rgb_run):
  return inference.load(rgb_run[0])


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
  return _make_workdir(tmp_path_factory.mktemp("gray_run"), mode="L", seed=1)


def _cli(capsys, *args) -> tuple[int, str]:
  """Runs the CLI's main in-process; returns (exit status, stderr with the exit message)."""
  flags.FLAGS.unparse_flags()
  argv = flags.FLAGS(["denoise", "--compilation_cache=", *map(str, args)])
  code, message = 0, ""
  try:
    denoise.main(argv)
  except SystemExit as e:
    code, message = (e.code, "") if isinstance(e.code, int) else (1, str(e.code))
  return code, capsys.readouterr().err + message


def _write(path: Path, array: np.ndarray, **kwargs) -> np.ndarray:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return array


def _random(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pixels(path: Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _expected(denoiser: inference.Denoiser, image: np.ndarray) -> np.ndarray:
  """What the library makes of a uint8 [H, W, C] image, as uint8."""
  out = denoiser.denoise(image[None].astype(np.float32) / 255.0)[0]
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Library.
# ---------------------------------------------------------------------------


def test_denoiser_equals_model_at_training_size(rgb_run, rgb_denoiser):
  _, state = rgb_run
  assert rgb_denoiser.image_shape == (32, 32, 3)
  assert rgb_denoiser.multiple == 4  # SmallCAE: 2 stride-2 levels.
  assert rgb_denoiser.mode == "RGB"
  images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
  want = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                        train=False)
  np.testing.assert_allclose(rgb_denoiser.denoise(images), np.asarray(want), atol=1e-6)
  # uint8 input is scaled; the wrong channel count is refused.
  np.testing.assert_allclose(rgb_denoiser.denoise((images * 255).astype(np.uint8)),
                             rgb_denoiser.denoise((images * 255).astype(np.uint8) / 255.0),
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    rgb_denoiser.denoise(images[..., :1])
  # Any size comes back at its size, in range.
  odd = rgb_denoiser.denoise(np.random.default_rng(1).random((1, 37, 53, 3), np.float32))
  assert odd.shape == (1, 37, 53, 3) and 0 <= odd.min() and odd.max() <= 1
  assert rgb_denoiser.plan(37, 53).padded == (40, 56)


def _fixed_size_identity(variables, images, *, train):
  """A stand-in for a dense-bottleneck model: only 16x16 images, returned unchanged."""
  del variables, train
  if images.shape[1:3] != (16, 16):
    raise ValueError("16x16 only")
  return images


def _conv_identity(variables, images, *, train):
  """A stand-in for a fully convolutional model with 3 stride-2 levels."""
  del variables, train
  if images.shape[1] % 8 or images.shape[2] % 8:
    raise ValueError("multiples of 8 only")
  return images


@pytest.mark.parametrize("apply_fn, multiple", [(_fixed_size_identity, None),
                                                (_conv_identity, 8)])
def test_tiling_and_padding_are_exact_for_identity(apply_fn, multiple):
  # max_side=24 forces tiles on the convolutional stand-in as well.
  denoiser = inference.Denoiser(apply_fn, {}, image_shape=(16, 16, 3), max_side=24,
                                batch_size=4)
  assert denoiser.multiple == multiple
  rng = np.random.default_rng(0)
  for size in [(16, 16), (37, 53), (5, 7), (1, 40), (100, 9)]:
    plan = denoiser.plan(*size)
    assert denoiser.fits(*plan.tile)
    assert plan.padded[0] >= size[0] and plan.padded[1] >= size[1]
    assert plan.ys[-1] + plan.tile[0] == plan.padded[0]  # Tiles cover the padded image.
    assert plan.xs[-1] + plan.tile[1] == plan.padded[1]
    images = rng.random((2, *size, 3), np.float32)
    np.testing.assert_allclose(denoiser.denoise(images), images, atol=1e-6, err_msg=str(size))
  assert denoiser.plan(37, 53).num_tiles > 1


# A real filter as the "model": identity stand-ins cannot show seams or what the
# padding holds. A 5x5 binomial blur, reflect-padded by the model itself as a
# convolutional network pads its borders; its radius of 2 fits the halo of 3
# pixels (half the overlap of 6) that max_side=24 tiles get.
_BLUR_RADIUS = 2
_BLUR_1D = np.array([1, 4, 6, 4, 1], np.float32) / 16


def _blur(images):
  r = _BLUR_RADIUS
  x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
  c = images.shape[-1]
  kernel = np.outer(_BLUR_1D, _BLUR_1D)[:, :, None, None] * np.eye(c, dtype=np.float32)
  return jax.lax.conv_general_dilated(x, jnp.asarray(kernel), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


def _blur_any_size(variables, images, *, train):
  del variables, train
  return _blur(images)


def _blur_multiple_of_8(variables, images, *, train):
  del variables, train
  if images.shape[1] % 8 or images.shape[2] % 8:
    raise ValueError("multiples of 8 only")
  return _blur(images)


def _blur_numpy(images):
  """The same blur in float64 NumPy, separably."""
  r = _BLUR_RADIUS
  x = np.pad(images.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
  h, w = images.shape[1:3]
  x = sum(k * x[:, i:i + h] for i, k in enumerate(_BLUR_1D))
  return sum(k * x[:, :, i:i + w] for i, k in enumerate(_BLUR_1D))


def test_padding_holds_the_reflected_image_for_a_real_filter():
  # Documented: reflect-padded at the bottom and right to the next accepted
  # size, run whole, cropped. An identity hides what the padding holds; a blur
  # reads it in the last 2 rows and columns.
  denoiser = inference.Denoiser(_blur_multiple_of_8, {}, image_shape=(16, 16, 3), batch_size=4)
  assert denoiser.multiple == 8
  images = np.random.default_rng(3).random((2, 37, 53, 3), np.float32)
  assert denoiser.plan(37, 53).padded == (40, 56) and denoiser.plan(37, 53).num_tiles == 1
  padded = np.pad(images, ((0, 0), (0, 3), (0, 3), (0, 0)), mode="reflect")
  want = np.clip(_blur_numpy(padded)[:, :37, :53], 0, 1)
  np.testing.assert_allclose(denoiser.denoise(images), want, atol=1e-5)
  # Zero or edge padding would differ there by far more than the tolerance.
  for mode in ("constant", "edge"):
    other = np.pad(images, ((0, 0), (0, 3), (0, 3), (0, 0)), mode=mode)
    assert np.abs(_blur_numpy(other)[:, :37, :53] - want).max() > 1e-2


def _tile_outputs(image, plan):
  """Per pixel: the blur of every tile that covers it, and whether that tile saw all
  the pixels the blur reads there (or the image border, which the model reflects
  exactly as the untiled run does)."""
  (th, tw), (height, width) = plan.tile, plan.padded
  r = _BLUR_RADIUS
  outputs = []  # (output [H, W, C] with NaN outside the tile, full context [H, W])
  for y in plan.ys:
    for x in plan.xs:
      out = np.full((height, width, image.shape[-1]), np.nan)
      out[y:y + th, x:x + tw] = _blur_numpy(image[None, y:y + th, x:x + tw])[0]
      rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
      full = (((rows - y >= r) | (y == 0)) & ((y + th - 1 - rows >= r) | (y + th == height))
              & ((cols - x >= r) | (x == 0)) & ((x + tw - 1 - cols >= r) | (x + tw == width)))
      full &= ~np.isnan(out[..., 0])
      outputs.append((out, full))
  return outputs


def test_tiles_of_a_real_filter_are_placed_and_blended_exactly():
  image = np.random.default_rng(4).random((61, 83, 3), np.float32)
  untiled = inference.Denoiser(_blur_any_size, {}, image_shape=(16, 16, 3))
  tiled = inference.Denoiser(_blur_any_size, {}, image_shape=(16, 16, 3), max_side=24,
                             batch_size=4)
  plan = tiled.plan(61, 83)
  assert untiled.plan(61, 83).num_tiles == 1 and plan.num_tiles > 4
  assert plan.padded == (61, 83) and min(plan.overlap) > _BLUR_RADIUS
  assert plan.halo == (3, 3)
  whole = untiled.denoise(image[None])[0]
  # One tile is the model itself.
  np.testing.assert_allclose(whole, np.clip(_blur_numpy(image[None])[0], 0, 1), atol=1e-5)
  got = tiled.denoise(image[None])[0]

  outputs = _tile_outputs(image.astype(np.float64), plan)
  stack = np.stack([o for o, _ in outputs])
  assert not np.isnan(np.nanmax(stack, axis=0)).any()  # Every pixel is covered.
  # Blending is a weighted mean with positive weights: each pixel lies between
  # the outputs of the tiles that cover it.
  assert np.all(got >= np.clip(np.nanmin(stack, axis=0), 0, 1) - 1e-5)
  assert np.all(got <= np.clip(np.nanmax(stack, axis=0), 0, 1) + 1e-5)
  # Where every covering tile saw the blur's whole footprint, the blend of
  # equal values is the untiled result: no offset, flip or weighting error.
  covered = np.stack([~np.isnan(o[..., 0]) for o, _ in outputs])
  exact = np.all(np.stack([f for _, f in outputs]) | ~covered, axis=0)
  assert exact.mean() > 0.5
  np.testing.assert_allclose(got[exact], whole[exact], atol=1e-5)


def _smooth(height, width, channels=3):
  """A smooth image: seams that noise would hide in its spread stand out on it."""
  y, x = np.mgrid[:height, :width]
  image = 0.5 + 0.4 * np.sin(y / 7.0) * np.cos(x / 9.0)
  return np.repeat(image[None, ..., None], channels, axis=-1).astype(np.float32)


def test_tiling_a_real_filter_has_no_seams():
  # Issue 25: tiles used to be blended with weight 1 / (overlap + 1) at their
  # inner edges, where the blur reads the tile's padding instead of the
  # neighbouring pixels: seams of 0.026 on noise. Pixels within the halo of
  # an inner edge now get weight 0, so every pixel is the blend of tiles that
  # saw its whole footprint, i.e. the untiled result.
  images = {"noise": np.random.default_rng(4).random((1, 61, 83, 3), np.float32),
            "smooth": _smooth(61, 83)}
  untiled = inference.Denoiser(_blur_any_size, {}, image_shape=(16, 16, 3))
  uneven = False
  for max_side in (16, 24, 45, 60):
    tiled = inference.Denoiser(_blur_any_size, {}, image_shape=(16, 16, 3), max_side=max_side,
                               batch_size=4)
    plan = tiled.plan(61, 83)
    assert plan.num_tiles > 1 and min(plan.halo) >= _BLUR_RADIUS, (max_side, plan)
    for offsets in (plan.ys, plan.xs):
      uneven |= len(set(np.diff(offsets))) > 1
    for name, image in images.items():
      np.testing.assert_allclose(tiled.denoise(image), untiled.denoise(image), atol=1e-5,
                                 err_msg=f"{name}, max_side={max_side}")
  # Neighbours that share more than the overlap (45: rows at 0 and 16 of 45;
  # 60: rows at 0 and 1) cross-fade over what they share beyond the halos.
  assert uneven


def test_tiles_use_the_untiled_padding_and_grid():
  # A model that takes multiples of 8 only: tiles lie on its grid of the image
  # reflect-padded as the untiled run pads it (61x83 -> 64x88), so the last
  # rows and columns, which the blur reads from that padding, match too.
  image = np.random.default_rng(5).random((2, 61, 83, 3), np.float32)
  untiled = inference.Denoiser(_blur_multiple_of_8, {}, image_shape=(16, 16, 3))
  tiled = inference.Denoiser(_blur_multiple_of_8, {}, image_shape=(16, 16, 3), max_side=24,
                             batch_size=4)
  plan = tiled.plan(61, 83)
  assert untiled.plan(61, 83).num_tiles == 1 and plan.num_tiles > 4
  assert plan.padded == untiled.plan(61, 83).padded == (64, 88)
  assert all(offset % 8 == 0 for offset in plan.ys + plan.xs)
  np.testing.assert_allclose(tiled.denoise(image), untiled.denoise(image), atol=1e-5)


def _cut_reach(apply_fn, variables, cut=80):
  """Output pixels, next to a cut of the input on the model's grid, that the cut changes.

  The model is run on a 32x160 noise image and on its parts left and right of
  column ``cut``; the widest band of columns beside the cut where a part's
  output differs from the whole's is what a tile's halo must hide.
  """
  images = np.random.default_rng(6).random((1, 32, 160, 3), np.float32)
  whole = np.asarray(apply_fn(variables, images, train=False))[0]
  left = np.asarray(apply_fn(variables, images[:, :, :cut], train=False))[0]
  right = np.asarray(apply_fn(variables, images[:, :, cut:], train=False))[0]
  changed_left = np.abs(left - whole[:, :cut]).max(axis=(0, 2)) > 1e-6
  changed_right = np.abs(right - whole[:, cut:]).max(axis=(0, 2)) > 1e-6
  return max(cut - np.argmax(changed_left), np.flatnonzero(changed_right).max() + 1)


def test_tiling_a_random_tiny_cae_is_exact_when_its_reach_fits_the_halo():
  model = models.create("TinyCAE")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  apply_fn = inference.ModuleApply(model)
  # What a cut of the input spoils next to it (random weights: every path that
  # exists counts). The layer arithmetic bounds it by 23 at any column; on the
  # 8-pixel grid where tiles are cut it is 16.
  reach = _cut_reach(apply_fn, variables)
  assert reach == 16
  image = np.random.default_rng(7).random((1, 150, 230, 3), np.float32)
  untiled = inference.Denoiser(apply_fn, variables, image_shape=(32, 32, 3), batch_size=4)
  assert untiled.plan(150, 230).num_tiles == 1
  want = untiled.denoise(image)
  # 128-pixel tiles (overlap 32, halo 16) are exact: the same arithmetic on
  # the same pixels, up to float32 rounding (1e-7 here; different shapes may
  # sum in another order). 96-pixel tiles (halo 12 < 16) are not; this also
  # shows that the comparison can see a halo that is too small.
  for max_side, exact in ((128, True), (96, False)):
    tiled = inference.Denoiser(apply_fn, variables, image_shape=(32, 32, 3), batch_size=4,
                               max_side=max_side)
    plan = tiled.plan(150, 230)
    assert plan.num_tiles > 2 and (min(plan.halo) >= reach) == exact, plan
    error = np.abs(tiled.denoise(image) - want).max()
    if exact:
      assert error < 1e-5, error
    else:
      assert error > 1e-4, error


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------


def test_cli_subprocess_odd_size_equals_library(rgb_run, rgb_denoiser, tmp_path):
  image = _write(tmp_path / "in" / "odd.png", _random((37, 53, 3)))
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "jax_dae.denoise", f"--workdir={rgb_run[0]}", f"--out_dir={out}",
       f"--compilation_cache={ROOT / '.pytest_cache' / 'xla'}", str(tmp_path / "in" / "odd.png")],
      cwd=ROOT, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (Image.open(out / "odd.png").mode, Image.open(out / "odd.png").size) == ("RGB", (53, 37))
  np.testing.assert_array_equal(_pixels(out / "odd.png"), _expected(rgb_denoiser, image))
  compare = _pixels(out / "odd.compare.png")  # input | output
  assert compare.shape == (37, 2 * 53 + 4, 3)
  np.testing.assert_array_equal(compare[:, :53], image)
  np.testing.assert_array_equal(compare[:, -53:], _pixels(out / "odd.png"))


def test_grayscale_and_rgba_inputs(rgb_run, rgb_denoiser, tmp_path, capsys):
  gray = _write(tmp_path / "gray.png", _random((20, 30), seed=1))
  rgba = _write(tmp_path / "rgba.png", _random((24, 40, 4), seed=2))
  out = tmp_path / "out"
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", tmp_path / "gray.png",
                   tmp_path / "rgba.png")
  assert code == 0, err
  assert "grayscale inputs are repeated to 3 channels" in err
  # Gray in, gray out: the model sees the gray value in 3 channels.
  with Image.open(out / "gray.png") as image:
    assert image.mode == "L" and image.size == (30, 20)
  want = Image.fromarray(_expected(rgb_denoiser, np.repeat(gray[..., None], 3, axis=-1)))
  np.testing.assert_array_equal(_pixels(out / "gray.png"), np.asarray(want.convert("L")))
  # RGBA: colour denoised, alpha re-attached untouched.
  result = _pixels(out / "rgba.png")
  assert result.shape == (24, 40, 4)
  np.testing.assert_array_equal(result[..., 3], rgba[..., 3])
  np.testing.assert_array_equal(result[..., :3], _expected(rgb_denoiser, rgba[..., :3]))
  assert _pixels(out / "rgba.compare.png").shape == (24, 2 * 40 + 4, 4)


def test_gray_model_converts_colour_and_keeps_alpha(gray_run, tmp_path, capsys):
  colour = _write(tmp_path / "in" / "colour.png", _random((32, 32, 3), seed=3))
  rgba = _write(tmp_path / "in" / "rgba.png", _random((32, 32, 4), seed=4))
  out = tmp_path / "out"
  code, err = _cli(capsys, f"--workdir={gray_run[0]}", f"--out_dir={out}", tmp_path / "in")
  assert code == 0, err
  assert "colour inputs are converted to grayscale" in err
  denoiser = inference.load(gray_run[0])
  assert denoiser.image_shape == (32, 32, 1)
  luma = np.asarray(Image.fromarray(colour).convert("L"))[..., None]
  with Image.open(out / "colour.png") as image:
    assert image.mode == "L"
  np.testing.assert_array_equal(_pixels(out / "colour.png"), _expected(denoiser, luma)[..., 0])
  result = _pixels(out / "rgba.png")  # LA: gray output plus the untouched alpha.
  assert result.shape == (32, 32, 2)
  np.testing.assert_array_equal(result[..., 1], rgba[..., 3])


def test_broken_files_are_named_and_the_rest_processed(rgb_run, tmp_path, capsys):
  _write(tmp_path / "in" / "good.png", _random((32, 32, 3)))
  (tmp_path / "in" / "broken.png").write_bytes(b"this is not a PNG")
  data = (tmp_path / "in" / "good.png").read_bytes()
  (tmp_path / "in" / "truncated.png").write_bytes(data[: len(data) // 2])
  out = tmp_path / "out"
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", tmp_path / "in")
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: 2 of 3 files could not be denoised")
  for name in ("broken.png", "truncated.png"):
    assert f"error: {tmp_path / 'in' / name}: cannot decode" in err
    assert name in last
    assert not (out / name).exists()
  assert (out / "good.png").is_file() and (out / "good.compare.png").is_file()


def test_never_overwrites_inputs(rgb_run, tmp_path, capsys):
  folder = tmp_path / "in"
  _write(folder / "a.png", _random((32, 32, 3)))
  _write(folder / "in" / "a.png", _random((32, 32, 3), seed=1))
  before = {p: p.read_bytes() for p in folder.rglob("*.png")}
  workdir = f"--workdir={rgb_run[0]}"
  cases = [
      ([f"--out_dir={folder}", folder], "is the input folder"),
      ([f"--out_dir={folder / 'sub'}", folder], "is inside the input folder"),
      ([f"--out_dir={folder}", folder / "a.png"], "is the folder of the input"),
      # Outputs beside the folder: in/in/a.png would be written to in/a.png, an input.
      ([f"--out_dir={tmp_path}", folder], "would overwrite the input"),
  ]
  for args, message in cases:
    code, err = _cli(capsys, workdir, *args)
    assert code == 2 and message in err, (args, err)
  assert {p: p.read_bytes() for p in folder.rglob("*.png")} == before
  assert not list(tmp_path.glob("*.png")) and not (folder / "sub").exists()


def test_inputs_with_the_same_output_name_are_refused(rgb_run, tmp_path, capsys):
  # Two files named alike in different folders: both would be out/a.png, and
  # keeping the suffix does not separate them (out/a.png.png twice).
  _write(tmp_path / "x" / "a.png", _random((32, 32, 3), seed=1))
  _write(tmp_path / "y" / "a.png", _random((32, 32, 3), seed=2))
  # In one folder: a.jpg and a.png keep their suffixes, and a.jpg.png's own
  # output is a.jpg.png too.
  for name in ("a.jpg", "a.png", "a.jpg.png"):
    _write(tmp_path / "z" / name, _random((32, 32, 3), seed=3))
  out = tmp_path / "out"
  cases = [((tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"), out / "a.png.png"),
           ((tmp_path / "z",), out / "a.jpg.png")]
  for inputs, clash in cases:
    with pytest.raises(denoise.SetupError, match="Several inputs would be written to") as e:
      denoise.plan_jobs([str(i) for i in inputs], out)
    assert str(clash) in str(e.value)
    code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", *inputs)
    assert code == 2 and "Several inputs would be written to" in err and str(clash) in err, err
    assert not out.exists()  # Refused before anything was written.
  # The same file named twice is one input, not a clash.
  jobs = denoise.plan_jobs([str(tmp_path / "x" / "a.png")] * 2, out)
  assert [j.output for j in jobs] == [out / "a.png"]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
@pytest.mark.parametrize("which", ["a.png", "a.compare.png"])
def test_an_output_linked_to_an_input_is_refused(rgb_run, tmp_path, capsys, link, which):
  # An out_dir left from an earlier run (or made with cp -al) may hold links to
  # the inputs: writing the output would then write over an input.
  a = _write(tmp_path / "in" / "a.png", _random((32, 32, 3), seed=1))
  b = _write(tmp_path / "in" / "b.png", _random((32, 32, 3), seed=2))
  out = tmp_path / "out"
  out.mkdir()
  target = out / which
  (os.link if link == "hard" else os.symlink)(tmp_path / "in" / "b.png", target)
  before = {p: p.read_bytes() for p in (tmp_path / "in").iterdir()}
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", tmp_path / "in")
  assert code == 2, err
  assert f"The output {target} would overwrite the input" in err and "b.png" in err
  assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
  np.testing.assert_array_equal(_pixels(tmp_path / "in" / "a.png"), a)
  np.testing.assert_array_equal(_pixels(target), b)  # The link is left as it was.
  assert sorted(p.name for p in out.iterdir()) == [which]


def test_corrupt_writes_before_after(rgb_run, rgb_denoiser, tmp_path, capsys):
  image = _write(tmp_path / "face.png", _random((37, 53, 3), seed=5))
  out = tmp_path / "out"
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", f"--corrupt={BLUR}",
                   tmp_path / "face.png")
  assert code == 0, err
  corrupted = inference.make_corrupter(BLUR)(image[None] / 255.0, [0])
  as_uint8 = np.clip(np.round(corrupted[0] * 255.0), 0, 255).astype(np.uint8)
  compare = _pixels(out / "face.compare.png")  # input | corrupted | output
  assert compare.shape == (37, 3 * 53 + 2 * 4, 3)
  np.testing.assert_array_equal(compare[:, :53], image)
  np.testing.assert_array_equal(compare[:, 57:110], as_uint8)
  want = np.clip(np.round(rgb_denoiser.denoise(corrupted)[0] * 255.0), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(_pixels(out / "face.png"), want)
  np.testing.assert_array_equal(compare[:, -53:], want)
  # A bad spec stops before anything runs; one that does not fit a size fails that file.
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}",
                   "--corrupt=gaussian_blurr()", tmp_path / "face.png")
  assert code == 2 and "--corrupt='gaussian_blurr()'" in err
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={tmp_path / 'out2'}",
                   "--corrupt=pixelate(block=8)", tmp_path / "face.png")
  assert code == 1 and f"{tmp_path / 'face.png'}: --corrupt does not apply" in err


def test_folder_relative_paths_progress_and_batches(rgb_run, rgb_denoiser, tmp_path, capsys):
  folder = tmp_path / "photos"
  images = {
      "a.png": _write(folder / "a.png", _random((32, 32, 3), seed=6)),
      "a.jpg": _write(folder / "a.jpg", _random((32, 32, 3), seed=7), quality=95),
      "sub/b.png": _write(folder / "sub" / "b.png", _random((32, 32, 3), seed=8)),
      "sub/deeper/c.bmp": _write(folder / "sub" / "deeper" / "c.bmp", _random((24, 40, 3))),
  }
  _write(folder / ".hidden.png", _random((8, 8, 3)))
  (folder / "notes.txt").write_text("not an image")
  out = tmp_path / "out"
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={out}", "--batch_size=2",
                   folder)
  assert code == 0, err
  assert "4/4" in err  # The progress bar.
  written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png")
                   if not p.name.endswith(".compare.png"))
  # a.jpg and a.png would both be a.png: both keep their suffix.
  assert written == ["a.jpg.png", "a.png.png", "sub/b.png", "sub/deeper/c.png"]
  for rel, name in [("a.png", "a.png.png"), ("sub/b.png", "sub/b.png"),
                    ("sub/deeper/c.bmp", "sub/deeper/c.png")]:
    # Batched with other images: equal up to float rounding.
    diff = np.abs(_pixels(out / name).astype(int) - _expected(rgb_denoiser, images[rel]))
    assert diff.max() <= 1, rel


def test_setup_errors(rgb_run, tmp_path, capsys):
  _write(tmp_path / "x.png", _random((8, 8, 3)))
  code, err = _cli(capsys, f"--workdir={tmp_path / 'nowhere'}", f"--out_dir={tmp_path / 'o'}",
                   tmp_path / "x.png")
  assert code == 2 and "config.json not found" in err
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={tmp_path / 'o'}",
                   tmp_path / "missing.png")
  assert code == 2 and "missing.png does not exist" in err
  code, err = _cli(capsys, f"--workdir={rgb_run[0]}", f"--out_dir={tmp_path / 'o'}")
  assert code == 2 and "name the image files" in err
  with pytest.raises(ValueError, match="checkpoint='newest' is unknown"):
    inference.load(rgb_run[0], checkpoint="newest")
