"""Image quality metrics on [0, 1] images, per example (dm-pix)."""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image (``[B]``), peak value 1.

  Identical images give +inf, as the formula does.
  """
  return pix.psnr(a.astype(jnp.float32), b.astype(jnp.float32))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Structural similarity per image (``[B]``): 11x11 Gaussian window, sigma 1.5.

  Wang et al. (2004) constants (k1 = 0.01, k2 = 0.03, peak 1), averaged over
  the positions where the window fits and over channels; equal to
  scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``.
  """
  return pix.ssim(a.astype(jnp.float32), b.astype(jnp.float32))


def image_metrics(reconstruction: jax.Array, clean: jax.Array) -> dict[str, jax.Array]:
  """Per-image PSNR, SSIM and MSE, each ``[B]``."""
  err = jnp.square(reconstruction.astype(jnp.float32) - clean.astype(jnp.float32))
  return {
      "psnr": psnr(reconstruction, clean),
      "ssim": ssim(reconstruction, clean),
      "mse": jnp.mean(err, axis=(1, 2, 3)),
  }
