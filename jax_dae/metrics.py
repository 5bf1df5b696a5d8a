"""Image quality metrics on [0, 1] images, per example (dm-pix; LPIPS on VGG16).

Every metric takes two ``[B, H, W, C]`` float batches of one shape and checks
that when traced (static dtypes and shapes only: nothing runs at run time):
uint8 images would be measured on a 0..255 scale against a peak of 1 (PSNR
-23 dB lower), so they are refused with a one-line ``ValueError``; convert
them with ``jax_dae.steps.to_float``. SSIM also refuses images smaller than
its 11x11 window, as scikit-image does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from jax_dae.models import vgg

SSIM_WINDOW = 11  # dm-pix's default filter_size, as scikit-image's gaussian_weights window.


def check_images(where: str, a: jax.Array, b: jax.Array, *, min_size: int = 1) -> None:
  """Raises a one-line ValueError unless ``a`` and ``b`` are float ``[B, H, W, C]`` of one shape.

  Static dtypes and shapes only (at trace time under ``jit``).

  Args:
    where: the function named in the message.
    a: images.
    b: images.
    min_size: smallest height and width allowed.
  """
  for x in (a, b):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{where}: images must be float in [0, 1], got {jnp.result_type(x)}; "
                       "convert uint8 with jax_dae.steps.to_float (x / 255).")
  if jnp.ndim(a) != 4 or jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{where}: needs two [B, H, W, C] batches of one shape, got "
                     f"{jnp.shape(a)} and {jnp.shape(b)}.")
  height, width = jnp.shape(a)[1:3]
  if min(height, width) < min_size:
    raise ValueError(f"{where}: {height}x{width} images are smaller than the {min_size}x{min_size} "
                     "window, which must fit at least once (scikit-image raises too).")


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image (``[B]``), peak value 1.

  Identical images give +inf, as the formula does.
  """
  check_images("psnr", a, b)
  return pix.psnr(a.astype(jnp.float32), b.astype(jnp.float32))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Structural similarity per image (``[B]``): 11x11 Gaussian window, sigma 1.5.

  Wang et al. (2004) constants (k1 = 0.01, k2 = 0.03, peak 1), averaged over
  the positions where the window fits and over channels; equal to
  scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``. Images must be
  at least 11x11 (``ValueError`` otherwise, as scikit-image).
  """
  check_images("ssim", a, b, min_size=SSIM_WINDOW)
  return pix.ssim(a.astype(jnp.float32), b.astype(jnp.float32))


def image_metrics(reconstruction: jax.Array, clean: jax.Array) -> dict[str, jax.Array]:
  """Per-image PSNR, SSIM and MSE, each ``[B]``."""
  check_images("image_metrics", reconstruction, clean, min_size=SSIM_WINDOW)
  err = jnp.square(reconstruction.astype(jnp.float32) - clean.astype(jnp.float32))
  return {
      "psnr": psnr(reconstruction, clean),
      "ssim": ssim(reconstruction, clean),
      "mse": jnp.mean(err, axis=(1, 2, 3)),
  }


_LPIPS_EPS = 1e-10  # LPIPS's normalize_tensor epsilon.


def _lpips_to_reference(params, heads, reference, candidates):
  """LPIPS of each of ``candidates`` ``[K, B, ...]`` to ``reference`` ``[B, ...]``: ``[K, B]``.

  One VGG pass over the reference and all candidates together.
  """
  if candidates.shape[1:] != reference.shape:
    raise ValueError(f"lpips: shapes differ, {candidates.shape[1:]} vs {reference.shape}.")
  k, n = candidates.shape[:2]
  x = jnp.concatenate([reference[None], candidates]).astype(jnp.float32)
  x = x.reshape(-1, *reference.shape[1:])
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  features = vgg.VGG16Features(layers=vgg.LAYERS).apply({"params": params}, x)
  total = jnp.zeros((k, n), jnp.float32)
  for layer in vgg.LAYERS:
    f = features[layer]
    f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + _LPIPS_EPS)
    f = f.reshape(k + 1, n, *f.shape[1:])
    diff = jnp.square(f[1:] - f[:1])
    total = total + jnp.mean(diff @ heads[layer], axis=(2, 3))
  return total


_lpips_jit = jax.jit(_lpips_to_reference)


@functools.lru_cache(maxsize=2)
def _lpips_weights(path: str | None):
  weights = vgg.load_weights(path)
  # Concrete arrays even when the first call comes from inside a jit trace:
  # a cached tracer would leak into every later trace.
  with jax.ensure_compile_time_eval():
    return (jax.tree.map(jnp.asarray, vgg.vgg_params(weights)),
            {k: jnp.asarray(v) for k, v in vgg.lpips_heads(weights).items()})


def lpips(a: jax.Array, b: jax.Array, *, weights: Mapping[str, np.ndarray] | str | None = None
          ) -> jax.Array:
  """LPIPS distance per image pair (``[B]``), VGG16 version 0.1 (Zhang et al., 2018).

  Features at relu1_2 ... relu5_3 are unit-normalised along channels, their
  squared differences weighted per channel by the learned linear heads,
  averaged over positions, and summed over the five layers. Images are in
  [0, 1] (1-channel images are repeated to RGB); this is LPIPS with
  ``normalize=True``: its [-1, 1] input and ScalingLayer equal the ImageNet
  mean/std normalisation ``VGG16Features`` applies. No resizing: any size of
  at least 16x16 works. 0 for identical images; lower is more similar.

  Args:
    a: ``[B, H, W, C]`` images in [0, 1].
    b: the same shape.
    weights: ``vgg.load_weights()`` output or a weights path; default
      resolution if ``None``.

  Returns:
    ``[B]`` float32 distances.
  """
  check_images("lpips", a, b)
  return lpips_to_reference(b, a[None], weights=weights)[0]


def lpips_to_reference(reference: jax.Array, candidates: jax.Array, *,
                       weights: Mapping[str, np.ndarray] | str | None = None) -> jax.Array:
  """``lpips(candidates[k], reference)`` for every ``k``, ``[K, B]``, in one VGG pass.

  Cheaper than ``K`` calls of ``lpips`` (``K + 1`` images per position
  instead of ``2 K``): for scoring several models against the same clean
  images (``scripts/reproduce.py lpips``).

  Args:
    reference: ``[B, H, W, C]`` images in [0, 1].
    candidates: ``[K, B, H, W, C]`` images in [0, 1].
    weights: as for ``lpips``.
  """
  if jnp.ndim(candidates) != 5:
    raise ValueError(f"lpips_to_reference: candidates must be [K, B, H, W, C], got shape "
                     f"{jnp.shape(candidates)}.")
  check_images("lpips_to_reference", candidates[0], reference)
  if weights is None or isinstance(weights, str):
    params, heads = _lpips_weights(weights or None)
  else:
    params = jax.tree.map(jnp.asarray, vgg.vgg_params(weights))
    heads = {k: jnp.asarray(v) for k, v in vgg.lpips_heads(weights).items()}
  return _lpips_jit(params, heads, reference, candidates)
