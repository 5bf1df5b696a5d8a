"""Layers shared by model families."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE_IMPLS = ("transpose", "subpixel")
CONV_IMPLS = ("xla", "space_to_depth", "matmul")
DOWNSAMPLE_IMPLS = ("xla", "space_to_depth")

# The forms that "auto" picks, per backend (``jax.default_backend()`` when the layer is
# traced); any other backend takes "gpu"'s. Measured: docs/benchmarks.md.
# - GPU (H100): the 9x9 convolutions at half resolution through cuDNN, cuDNN's stride-2
#   convolutions, the up-convolutions as one matmul.
# - CPU: every convolution as matmuls. XLA:CPU computes most of the CAE's convolutions
#   and their gradients with a generic loop (seconds per layer at batch 8 on 2 cores),
#   while its matmuls run at about PyTorch's speed.
AUTO_FORMS = {
    "gpu": {"upsample": "subpixel", "full_res_conv": "space_to_depth", "downsample": "xla"},
    "cpu": {"upsample": "subpixel", "full_res_conv": "matmul", "downsample": "space_to_depth"},
}


def auto_form(layer: str, backend: str | None = None) -> str:
  """The form ``"auto"`` means for ``layer`` ("upsample", "full_res_conv" or "downsample").

  Args:
    layer: the CAE attribute that names the layer kind.
    backend: a JAX backend name (default: ``jax.default_backend()``).

  Returns:
    The form chosen for that backend (``AUTO_FORMS``).
  """
  backend = backend or jax.default_backend()
  return AUTO_FORMS.get(backend, AUTO_FORMS["gpu"])[layer]


def _check_impl(impl: str, allowed: tuple[str, ...], what: str) -> None:
  if impl not in allowed:
    raise ValueError(f"{what} impl {impl!r} is unknown; allowed: {', '.join(allowed)}, auto.")


class _ConvLayer(nn.Module):
  """Fields and parameters shared by the convolution layers below.

  Attributes:
    features: output channels.
    impl: how the layer is computed (each layer lists its forms).
    dtype: computation dtype (the parameters stay float32).
  """

  features: int
  impl: str = "xla"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  def _params(self, x: jax.Array, kernel_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Declares ``kernel [k, k, in, features]`` and ``bias`` as ``nn.Conv`` does.

    Returns ``x``, the kernel and the bias in ``dtype``.
    """
    k = kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _even_size(x: jax.Array) -> bool:
  return x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0


class UpConv2x(_ConvLayer):
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

  ``impl`` is "transpose", "subpixel" or "auto" (``auto_form("upsample")`` for
  the backend it is traced for); see ``_ConvLayer`` for the rest.
  """

  impl: str = "transpose"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = auto_form("upsample") if self.impl == "auto" else self.impl
    _check_impl(impl, UPSAMPLE_IMPLS, "upsample")
    x, kernel, bias = self._params(x, 4)
    if impl == "transpose":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y + bias
    return subpixel_upconv(x, kernel) + bias


class SameConv(_ConvLayer):
  """A stride-1 "SAME" convolution with an odd square kernel, like ``nn.Conv``.

  Same parameters as ``nn.Conv(features, (k, k), padding="SAME")`` (``kernel``
  ``[k, k, in, out]`` and ``bias``, same initialisers), computed one of two
  exact ways:

  * ``"xla"``: ``lax.conv_general_dilated``, as ``nn.Conv`` does.
  * ``"space_to_depth"``: ``space_to_depth_conv``, the same convolution on
    the 2x2 space-to-depth of the input with 4x the channels (for even height
    and width; odd sizes fall back to ``"xla"``).
  * ``"matmul"``: ``matmul_conv``, shifted copies of the input and matmuls
    (XLA:CPU runs these far faster than its convolutions).
  * ``"auto"``: ``auto_form("full_res_conv")``, the fastest of these measured
    on the backend the layer is traced for.

  See ``_ConvLayer`` for the rest.

  Attributes:
    kernel_size: the odd kernel side (keyword: it follows the shared fields).
  """

  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = auto_form("full_res_conv") if self.impl == "auto" else self.impl
    _check_impl(impl, CONV_IMPLS, "conv")
    x, kernel, bias = self._params(x, self.kernel_size)
    if impl == "matmul":
      return matmul_conv(x, kernel) + bias
    if impl == "space_to_depth" and _even_size(x):
      return space_to_depth_conv(x, kernel) + bias
    return _xla_conv(x, kernel, 1, "SAME") + bias


class DownConv2x(_ConvLayer):
  """A 4x4 stride-2 convolution with padding 1 that halves height and width.

  Same parameters as ``nn.Conv(features, (4, 4), strides=(2, 2),
  padding=((1, 1), (1, 1)))``, computed as ``lax.conv_general_dilated``
  (``"xla"``) or as ``space_to_depth_downconv`` (``"space_to_depth"``: four
  shifted copies of the padded input's space-to-depth and one matmul; even
  height and width, else ``"xla"``), or ``"auto"``: ``auto_form("downsample")``
  for the backend it is traced for. See ``_ConvLayer`` for the fields.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = auto_form("downsample") if self.impl == "auto" else self.impl
    _check_impl(impl, DOWNSAMPLE_IMPLS, "downsample")
    x, kernel, bias = self._params(x, 4)
    if impl == "space_to_depth" and _even_size(x):
      return space_to_depth_downconv(x, kernel) + bias
    return _xla_conv(x, kernel, 2, ((1, 1), (1, 1))) + bias


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


def conv2x2_as_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 2x2 "VALID" convolution, ``[n, h, w, in]`` -> ``[n, h - 1, w - 1, out]``.

  Computed as the four shifted copies of ``x`` side by side (tap ``(a, b)``
  reads ``x[m + a, n + b]``) and one matmul with ``kernel`` ``[2, 2, in, out]``,
  which XLA sends to cuBLAS.
  """
  _, h, w, cin = x.shape
  taps = [x[:, a:a + h - 1, b:b + w - 1, :] for a in (0, 1) for b in (0, 1)]
  return jnp.concatenate(taps, axis=-1) @ kernel.reshape(4 * cin, kernel.shape[-1])


def _pad1(x: jax.Array) -> jax.Array:
  """One zero pixel around height and width."""
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def subpixel_upconv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``UpConv2x``'s "subpixel" form without bias: shifted copies, one matmul, interleave."""
  y = conv2x2_as_matmul(_pad1(x), subpixel_phase_kernels(kernel))
  return interleave_phases(y, kernel.shape[-1])


def space_to_depth(x: jax.Array) -> jax.Array:
  """``[n, 2h, 2w, c]`` -> ``[n, h, w, 4 * c]``.

  Channel ``(p * 2 + q) * c + k`` of pixel ``(m, n)`` is channel ``k`` of
  pixel ``(2m + p, 2n + q)``.
  """
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def depth_to_space(y: jax.Array) -> jax.Array:
  """The inverse of ``space_to_depth``: ``[n, h, w, 4 * c]`` -> ``[n, 2h, 2w, c]``."""
  n, h, w, c4 = y.shape
  y = y.reshape(n, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * h, 2 * w, c4 // 4)


def space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
  """A stride-1 "SAME" ``k x k`` kernel (odd ``k``) -> its ``[t, t, 4 in, 4 out]`` coarse form.

  Fine output row ``2i + p`` reads fine input rows ``2i + p - r .. 2i + p + r``
  (``r = k // 2``); in space-to-depth coordinates that is coarse row ``i + d``,
  phase ``q``, with fine offset ``2d + q - p``, so tap ``d`` of the coarse
  kernel from input phase ``q`` to output phase ``p`` is fine tap
  ``2d + q - p + r`` (zero where that falls outside the kernel), with
  ``|d| <= (r + 1) // 2`` and ``t = 2 * ((r + 1) // 2) + 1``.
  """
  k, k2, cin, cout = kernel.shape
  if k != k2 or k % 2 == 0:
    raise ValueError(f"space_to_depth_kernel needs a square odd kernel, got {kernel.shape[:2]}.")
  r, reach = k // 2, (k // 2 + 1) // 2
  d = np.arange(-reach, reach + 1)
  # fine[d, q, p] = 2d + q - p + r, the fine tap, or -1 outside the kernel.
  fine = 2 * d[:, None, None] + np.arange(2)[None, :, None] - np.arange(2)[None, None, :] + r
  fine = np.where((fine >= 0) & (fine < k), fine, k)  # index k: the zero row appended below
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  # [dy, qy, py, dx, qx, px, in, out] -> [dy, dx, (qy, qx, in), (py, px, out)].
  taps = padded[fine[:, :, :, None, None, None], fine[None, None, None, :, :, :]]
  taps = taps.transpose(0, 3, 1, 4, 6, 2, 5, 7)
  t = 2 * reach + 1
  return taps.reshape(t, t, 4 * cin, 4 * cout)


def space_to_depth_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 "SAME" convolution (odd square kernel) computed at half resolution.

  ``depth_to_space(conv(space_to_depth(x), space_to_depth_kernel(kernel)))``:
  the same function as ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")``
  for even height and width, with 4x the channels on a quarter of the pixels,
  which suits GPU convolution kernels better when ``in`` or ``out`` has only a
  few channels (the CAE's 9x9 stem, 3 -> 64, and output layer, 64 -> 3). The
  coarse kernel has ``4 (t / k)**2`` times the multiplications: 1.23x for
  ``k = 9``, but 4x for ``k = 3``, where it measured no faster than cuDNN on
  VGG's first convolution (``scripts/bench_layers.py``).
  """
  coarse = space_to_depth_kernel(kernel)
  reach = coarse.shape[0] // 2
  return depth_to_space(_xla_conv(space_to_depth(x), coarse, 1, ((reach, reach),) * 2))


def downconv_phase_kernel(kernel: jax.Array) -> jax.Array:
  """A 4x4 stride-2 kernel ``[4, 4, in, out]`` -> its ``[2, 2, 4 in, out]`` space-to-depth form.

  ``kernel[2a + p, 2b + q, c]`` becomes tap ``(a, b)``, input channel
  ``(p * 2 + q) * in + c`` (``space_to_depth``'s order).
  """
  cin, cout = kernel.shape[2:]
  phases = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)  # [a, b, p, q, ..]
  return phases.reshape(2, 2, 4 * cin, cout)


def space_to_depth_downconv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 4x4 stride-2 convolution with padding 1, as four shifted copies and one matmul.

  Output pixel ``m`` reads padded input rows ``2m .. 2m + 3``, which are
  coarse rows ``m`` and ``m + 1`` of the padded input's space-to-depth: a 2x2
  "VALID" convolution there (``conv2x2_as_matmul``).
  """
  return conv2x2_as_matmul(space_to_depth(_pad1(x)), downconv_phase_kernel(kernel))


def _pad_hw(x: jax.Array, r: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 "SAME" ``k x k`` convolution (odd ``k``) as one matmul over patches.

  The ``k * k`` shifted copies of the padded input side by side (tap
  ``(a, b)`` at channels ``(a * k + b) * in ..``), times the kernel reshaped
  to ``[k * k * in, out]``. Suits few input channels (the 9x9 stem: 243 columns).
  """
  k, _, cin, cout = kernel.shape
  r, (_, h, w, _) = k // 2, x.shape
  xp = _pad_hw(x, r)
  cols = jnp.concatenate([xp[:, a:a + h, b:b + w] for a in range(k) for b in range(k)], axis=-1)
  return cols @ kernel.reshape(k * k * cin, cout)


def row_matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 "SAME" ``k x k`` convolution (odd square kernel) as one matmul and ``k`` sums.

  The ``k`` horizontally shifted copies of the padded input side by side
  (``[n, h + 2r, w, k * in]``) times the kernel arranged as
  ``[(column tap, in), (row tap, out)]`` gives, for every padded row, its
  contribution to each of the ``k`` output rows it reaches; the output sums
  the ``k`` row-shifted slices. Suits many input and few output channels (the
  9x9 output layer, 64 -> 3), where full patches would be ``k`` times larger.
  """
  k, _, cin, cout = kernel.shape
  r, (n, h, w, _) = k // 2, x.shape
  xp = _pad_hw(x, r)
  cols = jnp.concatenate([xp[:, :, b:b + w] for b in range(k)], axis=-1)
  rows = cols @ kernel.transpose(1, 2, 0, 3).reshape(k * cin, k * cout)
  rows = rows.reshape(n, h + 2 * r, w, k, cout)
  return sum(rows[:, a:a + h, :, a] for a in range(k))


def matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``SameConv``'s "matmul" form: a stride-1 "SAME" convolution as matmuls.

  Few input channels (``k * k * in <= 512``, the stem): ``im2col_conv``. Otherwise
  ``row_matmul_conv``, on the 2x2 space-to-depth of the input with the coarse
  kernel (``space_to_depth_kernel``) when height and width are even: on 2 CPU
  cores this ran the output layer's forward and backward 1.2-1.4x faster than
  at full resolution, and both some 40x faster than XLA's convolution.
  """
  k, _, cin, _ = kernel.shape
  if k * k * cin <= 512:
    return im2col_conv(x, kernel)
  if _even_size(x):
    return depth_to_space(row_matmul_conv(space_to_depth(x), space_to_depth_kernel(kernel)))
  return row_matmul_conv(x, kernel)
