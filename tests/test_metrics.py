"""PSNR, SSIM and MSE against scikit-image and NumPy (issue 25).

``jax_dae.metrics`` documents PSNR with peak value 1 (``data_range=1``) and
SSIM equal to ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``; these tests hold it to that, per
image of a batch, for 1 and 3 channels, over sizes from the smallest the 11x11
window fits to the LFW crop, eagerly and under ``jit``.
"""

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jax_dae import metrics

# float32 (ours) against float64 (scikit-image): the SSIM ratio and PSNR's log
# agree to a few float32 ulps of the per-window statistics.
SSIM_ATOL = 2e-5
PSNR_ATOL = 1e-4  # dB

# Compiled once per shape; eager dispatch of SSIM's ops costs seconds per call.
_psnr = jax.jit(metrics.psnr)
_ssim = jax.jit(metrics.ssim)

SIZES = [(11, 11), (16, 16), (33, 20), (112, 112)]


def _pair(shape, seed, sigma=0.1):
  """A clean image with structure (gradient, edge, texture) and a noisy copy, both in [0, 1].

  Uniform noise alone would give SSIM near 0 everywhere; a structured image
  spreads the per-window terms over their whole range.
  """
  rng = np.random.default_rng(seed)
  h, w, c = shape
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  clean = 0.5 * yy[..., None] + 0.3 * (xx[..., None] > 0.5) + 0.2 * rng.random(shape)
  clean = clean * np.linspace(0.6, 1.0, c)  # Channels differ.
  noisy = np.clip(clean + rng.normal(0, sigma, shape), 0, 1)
  return clean.astype(np.float32), noisy.astype(np.float32)


def _skimage_ssim(a, b):
  return structural_similarity(a.astype(np.float64), b.astype(np.float64),
                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                               data_range=1.0, channel_axis=-1)


def _skimage_psnr(a, b):
  return peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=1.0)


def _batch(shape, seeds):
  """Noisy and clean batches; image i has noise level 0.05 * (i + 1)."""
  pairs = [_pair(shape, s, sigma=0.05 * (i + 1)) for i, s in enumerate(seeds)]
  return np.stack([p[1] for p in pairs]), np.stack([p[0] for p in pairs])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_psnr_and_ssim_equal_skimage_per_image(size, channels):
  noisy, clean = _batch((*size, channels), seeds=[0, 1])
  want_psnr = [_skimage_psnr(c, n) for n, c in zip(noisy, clean, strict=True)]
  want_ssim = [_skimage_ssim(n, c) for n, c in zip(noisy, clean, strict=True)]
  # The two images differ, so a metric averaged over the batch would fail here.
  assert abs(want_ssim[0] - want_ssim[1]) > 0.05
  # Under jit, as the eval step runs it (eagerly: the tests below).
  out = jax.jit(metrics.image_metrics)(noisy, clean)
  assert {k: v.shape for k, v in out.items()} == {"psnr": (2,), "ssim": (2,), "mse": (2,)}
  np.testing.assert_allclose(out["psnr"], want_psnr, rtol=0, atol=PSNR_ATOL)
  np.testing.assert_allclose(out["ssim"], want_ssim, rtol=0, atol=SSIM_ATOL)
  want_mse = np.mean(np.square(noisy.astype(np.float64) - clean), axis=(1, 2, 3))
  np.testing.assert_allclose(out["mse"], want_mse, rtol=1e-5)


def test_uint8_valued_and_saturated_images_equal_skimage():
  # Values on the 1/255 grid with large black and white areas: flat windows
  # where the variances vanish and only the constants c1, c2 keep SSIM finite.
  rng = np.random.default_rng(2)
  clean = np.zeros((40, 48, 3), np.uint8)
  clean[:, 24:] = 255
  clean[10:30, 10:38] = rng.integers(0, 256, (20, 28, 3))
  noisy = np.clip(clean.astype(int) + rng.integers(-20, 21, clean.shape), 0, 255).astype(np.uint8)
  a, b = (x.astype(np.float32)[None] / 255 for x in (noisy, clean))
  # Eagerly here (the other tests run the metrics under jit).
  np.testing.assert_allclose(metrics.ssim(a, b), [_skimage_ssim(a[0], b[0])], atol=SSIM_ATOL)
  np.testing.assert_allclose(metrics.psnr(a, b), [_skimage_psnr(b[0], a[0])], atol=PSNR_ATOL)
  # skimage on the uint8 images themselves (data_range 255) is the same number.
  np.testing.assert_allclose(metrics.psnr(a, b), [peak_signal_noise_ratio(clean, noisy)],
                             atol=PSNR_ATOL)


def test_identical_images_give_infinite_psnr_and_ssim_one():
  # Documented: "Identical images give +inf, as the formula does."
  _, clean = _batch((16, 16, 3), seeds=[3, 4])
  psnr = np.asarray(_psnr(clean, clean))
  assert psnr.shape == (2,) and np.all(np.isposinf(psnr))
  np.testing.assert_allclose(_ssim(clean, clean), [1.0, 1.0], atol=1e-6)
  # A constant image against itself: every window is flat, SSIM is still 1.
  flat = np.full((1, 12, 12, 1), 0.25, np.float32)
  np.testing.assert_allclose(_ssim(flat, flat), [1.0], atol=1e-6)
  # One differing value keeps PSNR finite and equal to the formula.
  other = clean.copy()
  other[0, 3, 4, 1] += 0.5
  want = 10 * np.log10(1 / (0.25 / clean[0].size))
  psnr = np.asarray(_psnr(other, clean))
  assert np.isposinf(psnr[1])
  np.testing.assert_allclose(psnr[0], want, atol=PSNR_ATOL)


@pytest.mark.parametrize("size", [(7, 7), (10, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_ssim_refuses_images_smaller_than_the_window(size):
  noisy, clean = _batch((*size, 1), seeds=[5])
  with pytest.raises(ValueError, match="win_size exceeds image extent"):
    _skimage_ssim(noisy[0], clean[0])
  # No window fits, so there is nothing to average: a one-line error, eagerly
  # and under jit (where it is raised at trace time, from the static shape).
  for fn in (metrics.ssim, _ssim, metrics.image_metrics):
    with pytest.raises(ValueError, match=r"smaller than the 11x11 window") as error:
      fn(noisy, clean)
    assert "\n" not in str(error.value)
