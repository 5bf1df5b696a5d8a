r"""Times exact reformulations of the CAE's slow convolutions, forward + backward, one by one.

The H100 profile of the batch-8 CAE step (docs/benchmarks.md) puts half its
time in three full-resolution convolutions with few channels: the 9x9 output
convolution (64 -> 3), the last up-convolution and, to a lesser degree, the
9x9 stem (3 -> 64). cuDNN's kernels are poor at 3 channels. Each layer here
has a reference (``lax.conv_general_dilated``) and rewrites that compute the
same function with other kernels: output channels padded to a tile, the
convolution as one matmul followed by shifted sums ("matmul_shift"), patches
then one matmul ("im2col"), and space-to-depth for the stride-2 convolutions.

  python scripts/bench_layers.py --check          # CPU: every variant equals its reference
  python scripts/bench_layers.py --out=layers.json  # GPU: microseconds per fwd+bwd

What it found on an H100 (benchmarks/layers_h100.log, docs/benchmarks.md): the
up-convolutions as shifted copies plus one matmul ran 1.4-8.4x faster than
XLA's convolution of either form, and ``models/layers.py`` now computes them
so; none of the rewrites of the 9x9 convolutions beat cuDNN by more than 16%.

Each timing is one compiled ``fori_loop`` of ``--iters`` SGD-like updates of
(input, kernel) by their gradients, so that nothing is loop-invariant, divided
by the iteration count; median of ``--repeats`` calls after a warm-up.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable

import benchmark  # scripts/benchmark.py, beside this file
import jax
import jax.numpy as jnp
import numpy as np

from jax_dae.models import layers

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, stride=1, padding="SAME"):
  """The reference: XLA's convolution, cross-correlation like flax.linen.Conv."""
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def conv_pad_out(x, w, to: int):
  """Output channels zero-padded to ``to``, then sliced off."""
  cout = w.shape[-1]
  return conv(x, jnp.pad(w, ((0, 0),) * 3 + ((0, to - cout),)))[..., :cout]


def conv_pad_in(x, w, to: int):
  """Input channels zero-padded to ``to`` (data and kernel)."""
  cin = w.shape[2]
  x = jnp.pad(x, ((0, 0),) * 3 + ((0, to - cin),))
  return conv(x, jnp.pad(w, ((0, 0),) * 2 + ((0, to - cin), (0, 0))))


def conv_matmul_shift(x, w):
  """A SAME ``k x k`` conv as one matmul to ``k*k*out`` channels, then ``k*k`` shifted sums.

  ``y[h, w, o] = sum_{dy, dx} P[h + dy - r, w + dx - r, dy, dx, o]`` with
  ``P[h, w, dy, dx, o] = sum_c x[h, w, c] k[dy, dx, c, o]``: a good layout
  when ``out`` is tiny and ``in`` is not (the CAE's 64 -> 3 output layer).
  """
  k, _, _, cout = w.shape
  r = k // 2
  n, h, wd, _ = x.shape
  p = jnp.einsum("bhwc,yxco->bhwyxo", x, w)
  p = jnp.pad(p, ((0, 0), (r, r), (r, r), (0, 0), (0, 0), (0, 0)))
  return sum(p[:, dy:dy + h, dx:dx + wd, dy, dx, :] for dy in range(k) for dx in range(k))


def conv_im2col(x, w):
  """A SAME ``k x k`` conv as ``k*k`` shifted copies of the input, then one matmul."""
  k, _, cin, cout = w.shape
  r = k // 2
  n, h, wd, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
  cols = jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd, :] for dy in range(k) for dx in range(k)],
                         axis=-1)
  return cols @ w.reshape(k * k * cin, cout)


def down_conv(x, w):
  """Reference 4x4 stride-2 convolution, padding 1 (the CAE's encoder)."""
  return conv(x, w, 2, ((1, 1), (1, 1)))


def down_space_to_depth(x, w):
  """The 4x4/2 conv as a 2x2/1 XLA conv over the 2x2 space-to-depth of the padded input."""
  xs = layers.space_to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
  return conv(xs, layers.downconv_phase_kernel(w), 1, "VALID")


def up_transpose(x, w):
  """Reference 4x4 stride-2 transposed convolution (PyTorch padding 1)."""
  return jax.lax.conv_transpose(x, w, (2, 2), ((2, 2), (2, 2)), dimension_numbers=DN)


def up_subpixel(x, w):
  """The sub-pixel form with a 2x2 convolution (the library's until this benchmark)."""
  y = conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), layers.subpixel_phase_kernels(w), 1,
           "VALID")
  return layers.interleave_phases(y, w.shape[-1])


# Sub-pixel, the 2x2 conv as four shifted copies and one matmul (``UpConv2x`` now).
up_subpixel_im2col = layers.subpixel_upconv


# name -> (input shape, kernel shape, input needs a gradient, reference, variants).
LAYERS: dict[str, tuple] = {
    "out_9x9_64to3_112": ((112, 112, 64), (9, 9, 64, 3), True, conv, {
        "pad_out8": functools.partial(conv_pad_out, to=8),
        "pad_out16": functools.partial(conv_pad_out, to=16),
        "matmul_shift": conv_matmul_shift,
        "space_to_depth": layers.space_to_depth_conv,
    }),
    "stem_9x9_3to64_112": ((112, 112, 3), (9, 9, 3, 64), False, conv, {
        "pad_in4": functools.partial(conv_pad_in, to=4),
        "pad_in8": functools.partial(conv_pad_in, to=8),
        "im2col": conv_im2col,
        "space_to_depth": layers.space_to_depth_conv,
    }),
    "vgg_conv1_1_3to64_224": ((224, 224, 3), (3, 3, 3, 64), True, conv, {
        "space_to_depth": layers.space_to_depth_conv,
    }),
    "up_128to64_56": ((56, 56, 128), (4, 4, 128, 64), True, up_transpose, {
        "subpixel": up_subpixel,
        "subpixel_im2col": up_subpixel_im2col,
    }),
    "up_256to128_28": ((28, 28, 256), (4, 4, 256, 128), True, up_transpose, {
        "subpixel": up_subpixel,
        "subpixel_im2col": up_subpixel_im2col,
    }),
    "down_64to64_112": ((112, 112, 64), (4, 4, 64, 64), True, down_conv, {
        "space_to_depth": down_space_to_depth,
        "space_to_depth_matmul": layers.space_to_depth_downconv,
    }),
    "down_64to128_56": ((56, 56, 64), (4, 4, 64, 128), True, down_conv, {
        "space_to_depth": down_space_to_depth,
        "space_to_depth_matmul": layers.space_to_depth_downconv,
    }),
    "down_128to256_28": ((28, 28, 128), (4, 4, 128, 256), True, down_conv, {
        "space_to_depth_matmul": layers.space_to_depth_downconv,
    }),
}


def _inputs(layer: str, batch: int, dtype, seed: int = 0, shrink: int = 1):
  """Random input, kernel and cotangent key; ``shrink`` divides height and width."""
  (h, w, c), w_shape, *_ = LAYERS[layer]
  x_shape = (h // shrink, w // shrink, c)
  kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, *x_shape), jnp.float32).astype(dtype)
  w = (jax.random.normal(kw, w_shape, jnp.float32) / np.sqrt(np.prod(w_shape[:3]))).astype(dtype)
  return x, w, kc


def _loss(fn: Callable, x, w, ct):
  return jnp.sum(fn(x, w).astype(jnp.float32) * ct)


def check(batch: int = 2, shrink: int = 1) -> None:
  """Every variant's output and gradients equal the reference's (float32, full precision)."""
  with jax.default_matmul_precision("highest"):
    for layer, (_, _, x_grad, ref, variants) in LAYERS.items():
      x, w, kc = _inputs(layer, batch, jnp.float32, shrink=shrink)
      y = ref(x, w)
      ct = jax.random.normal(kc, y.shape)
      want = jax.grad(functools.partial(_loss, ref), argnums=(0, 1))(x, w, ct)
      for name, fn in variants.items():
        np.testing.assert_allclose(fn(x, w), y, rtol=1e-4, atol=1e-4, err_msg=f"{layer}/{name}")
        got = jax.grad(functools.partial(_loss, fn), argnums=(0, 1))(x, w, ct)
        for g, h, what in zip(got, want, ("input", "kernel"), strict=True):
          if what == "input" and not x_grad:
            continue
          np.testing.assert_allclose(g, h, rtol=1e-3, atol=1e-3,
                                     err_msg=f"{layer}/{name} {what} gradient")
        print(f"{layer}/{name}: equal to the reference", flush=True)


def time_variant(layer: str, fn: Callable, *, batch: int, dtype, iters: int, repeats: int
                 ) -> float:
  """Microseconds per forward + backward (gradient of the input only where the model needs it)."""
  _, _, x_grad, ref, _ = LAYERS[layer]
  x, w, kc = _inputs(layer, batch, dtype)
  ct = jax.random.normal(kc, ref(x, w).shape, jnp.float32)
  argnums = (0, 1) if x_grad else (1,)
  grad = jax.grad(functools.partial(_loss, fn), argnums=argnums)

  @jax.jit
  def loop(x, w):
    def body(_, xw):
      x, w = xw
      g = grad(x, w, ct)
      gw = g[-1]
      gx = g[0] if x_grad else jnp.zeros_like(x)
      return x - (1e-6 * gx).astype(x.dtype), w - (1e-6 * gw).astype(w.dtype)
    return jax.lax.fori_loop(0, iters, body, (x, w))

  return benchmark.median_call_seconds(loop, x, w, repeats=repeats) / iters * 1e6


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--check", action="store_true", help="check equality only (any device)")
  p.add_argument("--batches", default="8,64")
  p.add_argument("--precisions", default="float32,bfloat16")
  p.add_argument("--layers", default=",".join(LAYERS))
  p.add_argument("--variants", default="",
                 help="comma list of variants to time beside the reference (default: all)")
  p.add_argument("--iters", type=int, default=50)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="")
  args = p.parse_args()
  if args.check:
    check()
    return 0
  results = []
  print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}", flush=True)
  print(f"{'layer':22s} {'batch':>5s} {'dtype':9s} {'variant':16s} {'us':>9s} {'vs ref':>7s}")
  for layer in args.layers.split(","):
    _, _, _, ref, variants = LAYERS[layer]
    for batch in map(int, args.batches.split(",")):
      for precision in args.precisions.split(","):
        dtype = jnp.dtype(precision)
        base = None
        chosen = {k: v for k, v in variants.items()
                  if not args.variants or k in args.variants.split(",")}
        for name, fn in {"reference": ref, **chosen}.items():
          us = time_variant(layer, fn, batch=batch, dtype=dtype, iters=args.iters,
                            repeats=args.repeats)
          base = base or us
          results.append({"layer": layer, "batch": batch, "precision": precision,
                          "variant": name, "us": us})
          print(f"{layer:22s} {batch:5d} {precision:9s} {name:16s} {us:9.1f} {base / us:6.2f}x",
                flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                 "results": results}, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
