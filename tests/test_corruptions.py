"""Tests of jax_dae.corruptions: exactness, statistics, JAX properties, parsing, compilation.

Statistical checks allow ``Z = 5`` standard errors, each computed from the
sample size (binomial for fractions, the spread of the squared deviations for
variances). With a fixed key the tests are deterministic; the tolerance says
that a correct implementation would fail such a check with probability below
about 1e-6 for a fresh key, while the alternatives the checks guard against
(wrong scale, wrong peak, wrong fraction) sit many standard errors away.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.util import random_noise

from jax_dae import corruptions

Z = 5.0


# ---------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------


@functools.cache
def jitted(spec: str):
  """One compiled batched corruption per spec, shared by all tests."""
  return jax.jit(corruptions.parse(spec))


def keys(n: int, seed: int = 0) -> jax.Array:
  return jax.random.split(jax.random.key(seed), n)


def sample_images(b: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
  """Smooth-ish random float32 images with 8-bit levels, like decoded photos."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((b, -(-h // 4), -(-w // 4), c))
  image = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :h, :w]
  image = np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1)
  return (np.round(image * 255) / 255).astype(np.float32)


def constant(b: int, h: int, w: int, c: int, value: float) -> np.ndarray:
  return np.full((b, h, w, c), value, np.float32)


def assert_fraction(mask: np.ndarray, p: float, what: str) -> None:
  """Fraction of True in ``mask`` is ``p`` within Z binomial standard errors."""
  n = mask.size
  tol = Z * math.sqrt(p * (1 - p) / n)
  frac = mask.mean()
  assert abs(frac - p) <= tol, f"{what}: fraction {frac:.4f}, expected {p} ± {tol:.4f}"


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
  x = np.asarray(x, np.float64).ravel()
  return x.mean(), x.std() / math.sqrt(x.size)


def var_and_se(x: np.ndarray) -> tuple[float, float]:
  """Sample variance and its standard error (spread of the squared deviations)."""
  x = np.asarray(x, np.float64).ravel()
  sq = (x - x.mean()) ** 2
  return sq.mean(), sq.std() / math.sqrt(x.size)


def assert_moments(x: np.ndarray, mean: float, var: float, what: str) -> None:
  m, m_se = mean_and_se(x)
  v, v_se = var_and_se(x)
  assert abs(m - mean) <= Z * m_se, f"{what}: mean {m:.5f}, expected {mean} ± {Z * m_se:.5f}"
  assert abs(v - var) <= Z * v_se, f"{what}: var {v:.6f}, expected {var} ± {Z * v_se:.6f}"


def assert_same_moments(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
  """Mean and variance of two independent samples agree within Z combined SEs."""
  (m1, s1), (m2, s2) = mean_and_se(ours), mean_and_se(theirs)
  tol = Z * math.hypot(s1, s2)
  assert abs(m1 - m2) <= tol, f"{what}: mean {m1:.5f} vs skimage {m2:.5f} (± {tol:.5f})"
  (v1, s1), (v2, s2) = var_and_se(ours), var_and_se(theirs)
  tol = Z * math.hypot(s1, s2)
  assert abs(v1 - v2) <= tol, f"{what}: var {v1:.6f} vs skimage {v2:.6f} (± {tol:.6f})"


def skimage_noise(images: np.ndarray, mode: str, seed: int = 0, **kwargs) -> np.ndarray:
  """skimage.util.random_noise applied image by image (its Poisson peak is per image)."""
  rng = np.random.default_rng(seed)
  return np.stack([random_noise(im.astype(np.float64), mode=mode, rng=rng, **kwargs)
                   for im in images])


# ---------------------------------------------------------------------------
# 1. Deterministic ops equal independent NumPy/SciPy computations.
# ---------------------------------------------------------------------------


def scipy_blur(image: np.ndarray, kernel: int, sigma: float, padding: str) -> np.ndarray:
  """Separable Gaussian blur in float64 with a normalised ``kernel``-tap kernel."""
  r = kernel // 2
  taps = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
  taps /= taps.sum()
  # scipy's "mirror" is numpy's "reflect": d c b | a b c d | c b a.
  mode = {"reflect": "mirror", "zeros": "constant"}[padding]
  out = ndimage.correlate1d(image.astype(np.float64), taps, axis=0, mode=mode, cval=0.0)
  return ndimage.correlate1d(out, taps, axis=1, mode=mode, cval=0.0)


@pytest.mark.parametrize(
    "kernel,sigma,padding",
    [(9, 4.0, "reflect"), (9, 4.0, "zeros"), (5, 1.5, "reflect")],
)
def test_gaussian_blur_equals_separable_scipy_convolution(kernel, sigma, padding):
  image = sample_images(1, 32, 24, 3, seed=1)[0]
  ours = corruptions.gaussian_blur(jax.random.key(0), jnp.asarray(image), kernel=kernel,
                                   sigma=sigma, padding=padding)
  np.testing.assert_allclose(np.asarray(ours), scipy_blur(image, kernel, sigma, padding),
                             atol=2e-6, rtol=0)


def numpy_pixelate(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """Block means with row i in block floor(i * rows / H) (the documented rule)."""
  h, w = image.shape[:2]
  row_group = np.arange(h) * rows // h
  col_group = np.arange(w) * cols // w
  out = np.empty_like(image, dtype=np.float64)
  for i in range(rows):
    for j in range(cols):
      cell = np.ix_(row_group == i, col_group == j)
      out[cell] = image[cell].mean(axis=(0, 1))
  return out


def test_pixelate_block_and_grid_readings_on_112px():
  image = sample_images(1, 112, 112, 3, seed=2)[0]
  x = jnp.asarray(image)
  block = np.asarray(corruptions.pixelate(jax.random.key(0), x, block=8))
  grid = np.asarray(corruptions.pixelate(jax.random.key(0), x, grid=8))
  # block=8: 8x8-pixel squares (14 per side); grid=8: 8 squares of 14 pixels.
  expect_block = image.reshape(14, 8, 14, 8, 3).mean(axis=(1, 3))
  expect_grid = image.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(block, np.repeat(np.repeat(expect_block, 8, 0), 8, 1), atol=1e-6)
  np.testing.assert_allclose(grid, np.repeat(np.repeat(expect_grid, 14, 0), 14, 1), atol=1e-6)
  assert len(np.unique(block[..., 0])) <= 14 * 14 and len(np.unique(grid[..., 0])) <= 8 * 8


def test_pixelate_uneven_grid():
  image = sample_images(1, 30, 27, 1, seed=3)[0]
  out = corruptions.pixelate(jax.random.key(0), jnp.asarray(image), grid=8)
  np.testing.assert_allclose(np.asarray(out), numpy_pixelate(image, 8, 8), atol=1e-6)
  # Square sides differ by at most one pixel: 30 rows -> 3 or 4, 27 columns -> 3 or 4.
  sizes = np.bincount(np.arange(30) * 8 // 30)
  assert set(sizes) == {3, 4}


# ---------------------------------------------------------------------------
# 2. Statistics against skimage.util.random_noise and the definitions.
# ---------------------------------------------------------------------------


def test_gaussian_noise_moments_match_definition_and_skimage():
  x = constant(8, 32, 32, 3, 0.5)
  ours = np.asarray(jitted("gaussian_noise(sigma=0.1, clip=False)")(keys(8), x))
  theirs = skimage_noise(x, "gaussian", var=0.01, clip=False)
  assert_moments(ours - x, 0.0, 0.01, "gaussian residual")
  assert_same_moments(ours, theirs, "gaussian, unclipped")
  # Seed 003: x + 0.5 N(0, 1) clipped to [0, 1], on images spanning [0, 1].
  images = sample_images(8, 32, 32, 3)
  ours = np.asarray(jitted("gaussian_noise(sigma=0.5)")(keys(8, 1), images))
  theirs = skimage_noise(images, "gaussian", var=0.25)
  assert ours.min() >= 0 and ours.max() <= 1
  assert_fraction(ours == 1.0, float((theirs == 1.0).mean()), "clipped at 1")
  assert_same_moments(ours - images, theirs - images, "gaussian sigma=0.5, clipped")


def test_speckle_variance_matches_definition_and_skimage():
  x = constant(8, 32, 32, 3, 0.5)
  ours = np.asarray(jitted("speckle(clip=False)")(keys(8), x))
  # x + x n with n ~ N(0, 0.02): variance x^2 * 0.02.
  assert_moments(ours, 0.5, 0.25 * 0.02, "speckle at 0.5")
  theirs = skimage_noise(x, "speckle", var=0.02, clip=False)
  assert_same_moments(ours, theirs, "speckle at 0.5")
  images = sample_images(8, 32, 32, 3)
  ours = np.asarray(jitted("speckle()")(keys(8, 1), images))
  theirs = skimage_noise(images, "speckle", var=0.02)
  assert_same_moments(ours - images, theirs - images, "speckle on images")


poisson_peak = jax.jit(corruptions._poisson_peak)


@pytest.mark.parametrize("distinct", [1, 2, 5, 128, 129, 256])
def test_poisson_peak_is_skimage_power_of_two(distinct):
  values = np.linspace(0, 1, distinct).astype(np.float32)
  image = np.resize(values, (16, 16, 1))
  expected = 2 ** np.ceil(np.log2(len(np.unique(image.astype(np.float64)))))
  assert float(poisson_peak(image)) == expected


LEVELS = [26 / 255, 77 / 255, 153 / 255]  # 8-bit levels near 0.1, 0.3, 0.6


def poisson_test_images(b: int) -> np.ndarray:
  """Three constant bands plus a strip holding all 256 8-bit levels (peak 256)."""
  image = np.zeros((32, 32, 1), np.float32)
  for band, level in enumerate(LEVELS):
    image[8 * band : 8 * band + 8] = level
  image[24:] = (np.arange(256) / 255).reshape(8, 32, 1)
  return np.broadcast_to(image, (b, 32, 32, 1)).copy()


def test_poisson_variance_proportional_to_intensity_as_skimage():
  images = poisson_test_images(16)
  ours = np.asarray(jitted("poisson(clip=False)")(keys(16), images))
  theirs = skimage_noise(images, "poisson", clip=False)
  for band, level in enumerate(LEVELS):
    rows = slice(8 * band, 8 * band + 8)
    # Poisson(256 x) / 256: mean x, variance x / 256.
    assert_moments(ours[:, rows], level, level / 256, f"poisson at {level:.3f}")
    assert_same_moments(ours[:, rows], theirs[:, rows], f"poisson at {level:.3f}")
  # An explicit peak: variance x / 10.
  ours = np.asarray(jitted("poisson(peak=10, clip=False)")(keys(16, 1), images))
  assert ours.min() >= 0 and ours.max() > 1, "clip=False: counts above peak are kept"
  for band, level in enumerate(LEVELS):
    assert_moments(ours[:, 8 * band : 8 * band + 8], level, level / 10, f"peak=10 at {level:.3f}")
  counts = ours.astype(np.float64) * 10
  assert np.allclose(counts, np.round(counts), atol=1e-4), "values are k / peak for integer k"


def test_salt_pepper_fractions_and_ratio_match_skimage():
  x = constant(16, 32, 32, 3, 0.5)
  ours = np.asarray(jitted("salt_pepper(amount=0.3, salt_vs_pepper=0.7)")(keys(16), x))
  theirs = skimage_noise(x, "s&p", amount=0.3, salt_vs_pepper=0.7)
  for name, sample in [("ours", ours), ("skimage", theirs)]:
    assert_fraction(sample == 1.0, 0.3 * 0.7, f"{name} salt")
    assert_fraction(sample == 0.0, 0.3 * 0.3, f"{name} pepper")
  assert set(np.unique(ours)) == {0.0, 0.5, 1.0}
  # Channel-wise (seed 001, skimage): channels are selected independently.
  selected = ours != 0.5
  assert_fraction(selected.all(axis=-1), 0.3**3, "all three channels selected")
  # Per pixel: all channels of a pixel are replaced together, by one value.
  ours = np.asarray(jitted("salt_pepper(amount=0.3, channelwise=False)")(keys(16), x))
  assert np.all(ours == ours[..., :1])
  assert_fraction(ours[..., 0] != 0.5, 0.3, "pixels selected")
  assert_fraction(ours[..., 0] == 1.0, 0.15, "salt pixels")


@pytest.mark.parametrize(
    "spec,per_pixel",
    [("salt_pepper(amount=0.3, exact=True)", False),
     ("random_impulse(amount=0.3, exact=True)", True),
     ("masking_noise(amount=0.3, exact=True, channelwise=True)", False)],
)
def test_exact_selects_round_amount_times_n(spec, per_pixel):
  x = constant(4, 20, 20, 3, 0.5)
  changed = np.asarray(jitted(spec)(keys(4), x)) != 0.5
  if per_pixel:
    assert np.all(changed == changed[..., :1])
    changed = changed[..., 0]
  n = changed[0].size
  assert list(changed.reshape(4, -1).sum(axis=1)) == [round(0.3 * n)] * 4


def test_random_impulse_replaces_pixels_with_uniform_values():
  x = constant(16, 32, 32, 3, 0.5)
  out = np.asarray(jitted("random_impulse(amount=0.2)")(keys(16), x))
  changed = out != 0.5
  # Whole pixels are selected (all channels), each channel gets its own value.
  assert np.all(changed == changed[..., :1])
  assert_fraction(changed[..., 0], 0.2, "impulse pixels")
  assert_moments(out[changed], 0.5, 1 / 12, "impulse values ~ U[0, 1]")
  assert out.min() >= 0 and out.max() <= 1


def test_masking_noise_zeroes_pixels():
  x = constant(16, 32, 32, 3, 0.5)
  out = np.asarray(jitted("masking_noise(amount=0.2)")(keys(16), x))
  assert set(np.unique(out)) == {0.0, 0.5}
  assert np.all(out == out[..., :1])
  assert_fraction(out[..., 0] == 0, 0.2, "masked pixels")
  out = np.asarray(jitted("masking_noise(amount=0.2, channelwise=True)")(keys(16), x))
  assert_fraction(out == 0, 0.2, "masked values")
  assert_fraction((out == 0).all(axis=-1), 0.2**3, "all channels masked")


def test_coarse_dropout_one_block_lies_inside_and_reaches_every_border():
  out = np.asarray(jitted("coarse_dropout(n=1, size=12)")(keys(256), constant(256, 32, 32, 1, 1)))
  holes = out[..., 0] == 0
  assert set(np.unique(out)) == {0.0, 1.0}
  # Exactly one full 12x12 square per image: never cut by the border.
  assert np.all(holes.sum(axis=(1, 2)) == 144)
  rows, cols = holes.any(axis=2), holes.any(axis=1)
  assert np.all(rows.sum(axis=1) == 12) and np.all(cols.sum(axis=1) == 12)
  # Top-left corners cover [0, 32 - 12]: squares touch each border somewhere.
  assert rows[:, 0].any() and rows[:, -1].any() and cols[:, 0].any() and cols[:, -1].any()


def test_coarse_dropout_three_blocks_may_overlap():
  out = np.asarray(jitted("coarse_dropout(n=3, size=12)")(keys(64), constant(64, 64, 64, 3, 1)))
  holes = out == 0
  assert np.all(holes == holes[..., :1]), "blocks cover all channels"
  holes = holes[..., 0]
  areas = holes.sum(axis=(1, 2))
  square = np.ones((12, 12), bool)
  for hole in holes:
    # The holes are a union of 12x12 squares inside the image (opening keeps them).
    assert np.array_equal(ndimage.binary_opening(hole, square), hole)
    assert ndimage.label(hole)[1] <= 3
  assert areas.min() >= 144 and areas.max() == 3 * 144
  assert areas.min() < 3 * 144, "blocks may overlap"
  assert (areas == 3 * 144).mean() > 0.3, "most triples do not overlap on a 64x64 image"


def test_ranges_draw_parameters_per_image():
  x = constant(64, 16, 16, 1, 0.5)
  out = np.asarray(jitted("gaussian_noise(sigma=(0.05, 0.2), clip=False)")(keys(64), x))
  stds = (out - x).reshape(64, -1).std(axis=1)
  rel = Z * math.sqrt(1 / (2 * 256))  # Z standard errors of a std from 256 values.
  assert stds.min() >= 0.05 * (1 - rel) and stds.max() <= 0.2 * (1 + rel)
  assert stds.min() < 0.09 and stds.max() > 0.16, "sigma is drawn over the whole range"
  # An int parameter draws integers in [low, high], both included.
  out = np.asarray(jitted("coarse_dropout(n=1, size=(2, 6))")(keys(64), constant(64, 16, 16, 1, 1)))
  assert set((out == 0).sum(axis=(1, 2, 3))) == {4, 9, 16, 25, 36}


def test_choice_and_maybe_pick_per_image():
  ones = constant(256, 4, 4, 1, 1.0)
  out = np.asarray(jitted("choice(masking_noise(amount=1.0), identity, weights=(1, 3))")(
      keys(256), ones))
  zeroed = out.reshape(256, -1).max(axis=1) == 0
  assert np.all(zeroed | (out.reshape(256, -1).min(axis=1) == 1))
  assert_fraction(zeroed, 0.25, "choice picks the first op")
  out = np.asarray(jitted("maybe(masking_noise(amount=1.0), p=0.3)")(keys(256), ones))
  zeroed = out.reshape(256, -1).max(axis=1) == 0
  assert np.all(zeroed | (out.reshape(256, -1).min(axis=1) == 1))
  assert_fraction(zeroed, 0.3, "maybe applies the op")


# ---------------------------------------------------------------------------
# 3. Every op: deterministic per key, random across keys and examples, same
#    eagerly and under jit, shape/dtype/range preserved, 1 and 3 channels.
# ---------------------------------------------------------------------------

# (spec, random, range of the output)
SPECS = [
    ("identity", False, (0, 1)),
    ("gaussian_blur(kernel=9, sigma=4)", False, (0, 1)),
    ("pixelate(block=8)", False, (0, 1)),
    ("pixelate(grid=5)", False, (0, 1)),
    ("gaussian_noise(sigma=0.5)", True, (0, 1)),
    ("gaussian_noise(var=(0.001, 0.05), clip=False)", True, (-np.inf, np.inf)),
    ("poisson", True, (0, 1)),
    ("speckle", True, (0, 1)),
    ("salt_pepper(amount=0.3)", True, (0, 1)),
    ("salt_pepper(channelwise=False, exact=True)", True, (0, 1)),
    ("random_impulse(amount=0.2)", True, (0, 1)),
    ("masking_noise(amount=0.2, exact=True)", True, (0, 1)),
    ("coarse_dropout(n=3, size=12, fill=(0.0, 1.0))", True, (0, 1)),
    ("choice(gaussian_noise(sigma=0.1), speckle(), masking_noise(amount=0.3))", True, (0, 1)),
    ("maybe(gaussian_blur(sigma=(1.0, 3.0)) | pixelate(block=4), p=0.5)", True, (0, 1)),
]


def test_every_registered_op_is_covered():
  covered = {re.match(r"\w+", spec).group() for spec, _, _ in SPECS}
  assert set(corruptions.available()) <= covered


@pytest.mark.parametrize("spec,random,bounds", SPECS, ids=[s for s, _, _ in SPECS])
def test_op_properties(spec, random, bounds):
  batch = 4
  corrupt = corruptions.parse(spec)
  # 1 and 3 channels in one compiled program: one compile per spec, not two.
  both = jax.jit(lambda k, gray, rgb: (corrupt(k, gray), corrupt(k, rgb)))
  # The same image in every example of the batch.
  gray, rgb = (np.repeat(sample_images(1, 32, 32, c, seed=5), batch, axis=0) for c in (1, 3))
  outs = [np.asarray(o) for o in both(keys(batch), gray, rgb)]
  again = [np.asarray(o) for o in both(keys(batch), gray, rgb)]
  others = [np.asarray(o) for o in both(keys(batch, seed=1), gray, rgb)]
  for images, out, out_again, other in zip((gray, rgb), outs, again, others, strict=True):
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= bounds[0] and out.max() <= bounds[1]
    np.testing.assert_array_equal(out_again, out)
    if random:
      assert not np.array_equal(other, out), "another key gives another corruption"
      assert len({o.tobytes() for o in out}) > 1, "examples of a batch get different noise"
    else:
      np.testing.assert_array_equal(other, out)
      assert all(np.array_equal(o, out[0]) for o in out)
  # Eagerly (op by op, no jit): the same values. Once per spec, every primitive
  # compiles anew in eager mode.
  eager = np.asarray(corrupt(keys(batch), rgb))
  np.testing.assert_allclose(eager, outs[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_and_shape_preserved(dtype):
  for spec, _, _ in SPECS:
    shape = jax.eval_shape(corruptions.parse(spec), keys(2),
                           jax.ShapeDtypeStruct((2, 16, 24, 3), dtype))
    assert shape.shape == (2, 16, 24, 3) and shape.dtype == dtype, spec


# ---------------------------------------------------------------------------
# 4. Parse errors name the op or argument and what is allowed.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,message",
    [
        ("gaussian_nois(sigma=0.1)", r"Unknown corruption 'gaussian_nois'; available ops: .*"
         r"gaussian_noise.*combinators: choice, maybe"),
        ("gaussian_noise(sgima=0.1)", r"'gaussian_noise' has no argument 'sgima'; "
         r"allowed: sigma, var, mean, clip"),
        ("gaussian_noise(sigma=-1)", r"gaussian_noise: sigma must be >= 0, got -1"),
        ("gaussian_noise(sigma='big')", r"sigma must be float or None, got 'big'"),
        ("gaussian_noise(sigma=0.1, var=0.01)", r"give sigma .* or var .*, not both"),
        ("gaussian_noise(sigma=x)", r"value of 'sigma' must be a literal"),
        ("gaussian_noise(0.1)", r"'gaussian_noise' takes keyword arguments only"),
        ("gaussian_noise(sigma=(0.2, 0.1))", r"range sigma=\(0.2, 0.1\) has low > high"),
        ("gaussian_noise(sigma=(0.1, 0.2, 0.3))", r"a range for 'sigma' must be \(float low"),
        ("pixelate(block=(4, 8))", r"'block' takes one int or None; arguments that take a "
         r"\(low, high\) range: \(none\)"),
        ("pixelate(block=0)", r"pixelate: block must be >= 1"),
        ("pixelate(block=5)", r"block=5 does not divide the image size 32x32"),
        ("pixelate", r"exactly one of block=<pixels> or grid=<count>"),
        ("salt_pepper(amount=1.5)", r"salt_pepper: amount must be in \[0, 1\], got 1.5"),
        ("salt_pepper(channelwise=1)", r"channelwise must be bool, got 1"),
        ("coarse_dropout(size=40)", r"coarse_dropout: size must be in \[1, 32\]"),
        ("coarse_dropout(size=(4, 40))", r"coarse_dropout: size must be in \[1, 32\].*got 40"),
        ("coarse_dropout(fill=2.0)", r"coarse_dropout: fill must be in \[0, 1\]"),
        ("gaussian_blur(padding='same')", r"padding must be 'reflect' or 'zeros'"),
        ("gaussian_blur(kernel=4)", r"kernel must be a positive odd integer"),
        ("poisson(peak=0)", r"poisson: peak must be > 0"),
        ("choice()", r"'choice' needs at least one op"),
        ("choice(speckle, identity, weights=(1,))", r"weights must be 2 numbers >= 0"),
        ("choice(speckle, bogus)", r"Unknown corruption 'bogus'"),
        ("choice(speckle, identity, p=0.5)", r"'choice' has no argument 'p'; allowed: weights"),
        ("maybe(speckle, p=2)", r"'maybe': p must be a number in \[0, 1\], got 2"),
        ("maybe(speckle, identity)", r"'maybe' takes exactly one op, got 2"),
        ("maybe", r"'maybe' needs arguments"),
        ("speckle(", r"Cannot parse corruption spec"),
        ("speckle + identity", r"Cannot parse corruption 'speckle \+ identity'"),
    ],
)
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    corruptions.parse(spec, image_shape=(32, 32, 3))


def test_valid_specs_parse_and_empty_is_identity():
  for spec, _, _ in SPECS:
    corruptions.parse(spec, image_shape=(32, 32, 3))
  x = sample_images(2, 8, 8, 3)
  np.testing.assert_array_equal(np.asarray(corruptions.parse(" ")(keys(2), x)), x)


# ---------------------------------------------------------------------------
# 5. No host round trip: N steps of corruption in one compiled scan.
# ---------------------------------------------------------------------------


def test_corruptions_compile_into_one_scan_executable():
  spec = ("gaussian_blur(sigma=2)|choice(speckle, salt_pepper(amount=(0.1, 0.3), exact=True))"
          "|coarse_dropout")
  corrupt = corruptions.parse(spec, image_shape=(16, 16, 3))
  steps, batch = 3, 4

  # The shape of loops.make_train_loop: draw per-example keys from
  # fold_in(key, step) and corrupt the batch inside the scan body.
  def loop(images, key):
    def body(total, step):
      step_keys = jax.random.split(jax.random.fold_in(key, step), batch)
      return total + jnp.sum(corrupt(step_keys, images)), None

    return jax.lax.scan(body, jnp.float32(0), jnp.arange(steps))[0]

  images = jnp.asarray(sample_images(batch, 16, 16, 3))
  jaxpr = jax.make_jaxpr(loop)(images, jax.random.key(0))
  (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]

  def primitives(jaxpr) -> set[str]:
    """Primitive names in ``jaxpr`` and every jaxpr nested in its equations."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # ClosedJaxpr -> Jaxpr
    names = set()
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for value in eqn.params.values():
        for sub in value if isinstance(value, tuple | list) else [value]:
          if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
            names |= primitives(sub)
    return names

  inside = primitives(scan.params["jaxpr"])
  # The blur (convolution), the exact selection (sort), random bits and the
  # batched branch choice (select_n) all run inside the scan body, and nothing
  # calls back to the host.
  assert {"conv_general_dilated", "sort", "random_bits", "select_n"} <= inside
  assert not {p for p in inside if "callback" in p}

  lowered = jax.jit(loop).lower(images, jax.random.key(0))
  hlo = lowered.as_text()
  assert "stablehlo.while" in hlo and "stablehlo.convolution" in hlo
  assert "callback" not in hlo.lower()
  compiled = lowered.compile()
  assert compiled.as_text().count("HloModule ") == 1
  # The one executable runs all steps for any key.
  totals = [float(compiled(images, jax.random.key(seed))) for seed in (0, 1)]
  assert totals[0] != totals[1]
