"""Layers shared by model families."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

UPSAMPLE_IMPLS = ("transpose", "subpixel")


class UpConv2x(nn.Module):
  """A 4x4 stride-2 transposed convolution that doubles height and width.

  Equal to PyTorch's ``ConvTranspose2d(kernel_size=4, stride=2, padding=1)``
  and to ``nn.ConvTranspose(features, (4, 4), strides=(2, 2),
  padding=((2, 2), (2, 2)))``, with the same parameters (``kernel``
  ``[4, 4, in, out]`` and ``bias``), computed one of two exact ways:

  * ``"transpose"``: ``lax.conv_transpose``, a convolution over the input
    dilated with zeros (three quarters of its multiplications are by zero).
  * ``"subpixel"``: output pixel ``(2m + p, 2n + q)`` only sees input pixels
    ``m - 1 + p .. m + p`` (and likewise for columns) through kernel taps
    ``W[2r + p, 2s + q]``; so one stride-1 2x2 convolution of the input padded
    by one pixel, with the four phase kernels stacked as ``4 * out`` output
    channels, followed by a depth-to-space interleave, gives the same result
    with no multiplications by zero. The 2x2 convolution itself is computed
    as the four shifted copies of the input side by side and one matmul
    (cuBLAS), which on an H100 ran the forward + backward of the CAE's last
    up-convolution 7x faster than XLA's convolution of either form
    (``scripts/bench_layers.py``, docs/benchmarks.md).

  Attributes:
    features: output channels.
    impl: "transpose" or "subpixel".
    dtype: computation dtype.
  """

  features: int
  impl: str = "transpose"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl not in UPSAMPLE_IMPLS:
      raise ValueError(f"upsample impl {self.impl!r} is unknown; allowed: "
                       f"{', '.join(UPSAMPLE_IMPLS)}.")
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (4, 4, cin, self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.impl == "transpose":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y + bias
    return subpixel_upconv(x, kernel) + bias


def subpixel_phase_kernels(kernel: jax.Array) -> jax.Array:
  """``[4, 4, in, out]`` transposed-conv kernel -> ``[2, 2, in, 4 * out]`` phase kernels.

  ``kernel[2r + p, 2s + q]`` becomes tap ``(r, s)`` of phase ``(p, q)``.
  """
  cin, cout = kernel.shape[2:]
  phases = kernel.reshape(2, 2, 2, 2, cin, cout)  # [r, p, s, q, in, out]
  return phases.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)


def interleave_phases(y: jax.Array, features: int) -> jax.Array:
  """``[n, h + 1, w + 1, 4 * out]`` phase outputs -> the ``[n, 2h, 2w, out]`` image.

  Phase ``(p, q)`` of output pixel ``(m, n)`` is ``y[m + p, n + q, p, q]``.
  """
  n, h, w = y.shape[0], y.shape[1] - 1, y.shape[2] - 1
  y = y.reshape(n, h + 1, w + 1, 2, 2, features)
  rows = [jnp.stack([y[:, p:p + h, q:q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
  out = jnp.stack(rows, axis=2)  # [n, h, 2 (p), w, 2 (q), out]
  return out.reshape(n, 2 * h, 2 * w, features)


def subpixel_upconv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``UpConv2x``'s "subpixel" form without bias: shifted copies, one matmul, interleave."""
  _, h, w, cin = x.shape
  cout = kernel.shape[-1]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # The 2x2 "VALID" convolution: tap (a, b) reads padded[m + a, n + b].
  taps = [padded[:, a:a + h + 1, b:b + w + 1, :] for a in (0, 1) for b in (0, 1)]
  y = jnp.concatenate(taps, axis=-1) @ subpixel_phase_kernels(kernel).reshape(4 * cin, 4 * cout)
  return interleave_phases(y, cout)
