"""The CAE's convolution layers: every implementation equals the definition and nn.Conv*.

UpConv2x against a transposed convolution written as a scatter; SameConv and
DownConv2x (space-to-depth forms) against a convolution written as a loop.

Init, apply and gradients run under ``jax.jit``: op by op, each of the many
small ops dispatches (and compiles) on its own, which made this file take
about a minute on 2 cores.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dae import models
from jax_dae.models import layers
from jax_dae.models.layers import DownConv2x, SameConv, UpConv2x


def _scatter_reference(x, kernel, bias):
  """Input pixel (i, j) adds x[i, j] @ W[a, b] to output (2i + 2 - a, 2j + 2 - b)."""
  n, h, w, _ = x.shape
  out = np.zeros((n, 2 * h + 4, 2 * w + 4, kernel.shape[-1]), np.float64)
  for i in range(h):
    for j in range(w):
      for a in range(4):
        for b in range(4):
          out[:, 2 * i + 2 - a + 2, 2 * j + 2 - b + 2] += x[:, i, j] @ kernel[a, b]
  return out[:, 2:2 + 2 * h, 2:2 + 2 * w] + bias


@pytest.mark.parametrize("impl", ["transpose", "subpixel"])
def test_upconv_equals_scatter_definition_and_flax_conv_transpose(impl):
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 7, 3)), np.float64)
  layer = UpConv2x(4, impl=impl)
  variables = jax.jit(layer.init)(jax.random.key(0), jnp.asarray(x, jnp.float32))
  params = jax.tree.map(np.asarray, variables["params"])
  params["bias"] = np.arange(4, dtype=np.float32) / 10  # a bias that is not zero
  got = np.asarray(jax.jit(layer.apply)({"params": params}, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, _scatter_reference(x, params["kernel"], params["bias"]),
                             atol=1e-5)
  flax_layer = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
  np.testing.assert_allclose(
      got, jax.jit(flax_layer.apply)({"params": params}, x.astype(np.float32)), atol=1e-5)
  # Same parameters and initialisation as nn.ConvTranspose.
  ref = jax.jit(flax_layer.init)(jax.random.key(0), jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(ref["params"]["kernel"], variables["params"]["kernel"])


def _loop_conv_reference(x, kernel, bias, stride, pad):
  """``y[i, j] = sum_{a, b} x_padded[stride * i + a, stride * j + b] @ W[a, b]``."""
  k = kernel.shape[0]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h = (xp.shape[1] - k) // stride + 1
  w = (xp.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[-1]), np.float64)
  for a in range(k):
    for b in range(k):
      patch = xp[:, a:a + stride * (h - 1) + 1:stride, b:b + stride * (w - 1) + 1:stride]
      out += patch @ kernel[a, b]
  return out + bias


_CONV_CASES = {
    # name: (layer, the nn.Conv it replaces, stride, padding, input shape)
    "same9_3to5": (lambda impl: SameConv(5, kernel_size=9, impl=impl),
                   nn.Conv(5, (9, 9), padding="SAME"), 1, 4, (2, 10, 12, 3)),
    "same9_6to3": (lambda impl: SameConv(3, kernel_size=9, impl=impl),
                   nn.Conv(3, (9, 9), padding="SAME"), 1, 4, (2, 12, 10, 6)),
    "same3_odd_size": (lambda impl: SameConv(4, kernel_size=3, impl=impl),
                       nn.Conv(4, (3, 3), padding="SAME"), 1, 1, (1, 7, 9, 2)),
    # More than 512 patch columns: the "matmul" form sums row-shifted matmul outputs, at
    # half resolution (even size) or at full resolution (odd size).
    "same9_8to3": (lambda impl: SameConv(3, kernel_size=9, impl=impl),
                   nn.Conv(3, (9, 9), padding="SAME"), 1, 4, (2, 12, 10, 8)),
    "same5_24to2_odd_size": (lambda impl: SameConv(2, kernel_size=5, impl=impl),
                             nn.Conv(2, (5, 5), padding="SAME"), 1, 2, (1, 7, 9, 24)),
    "down_4to6": (lambda impl: DownConv2x(6, impl=impl),
                  nn.Conv(6, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1))), 2, 1,
                  (2, 8, 12, 4)),
}


@pytest.mark.parametrize("impl", ["xla", "space_to_depth", "matmul"])
@pytest.mark.parametrize("case", sorted(_CONV_CASES))
def test_conv_layers_equal_loop_definition_nn_conv_and_its_gradients(case, impl):
  make, flax_layer, stride, pad, shape = _CONV_CASES[case]
  if impl == "matmul" and case.startswith("down"):
    pytest.skip("DownConv2x's matmul form is its space_to_depth form")
  x = np.asarray(jax.random.normal(jax.random.key(1), shape), np.float64)
  layer = make(impl)
  variables = jax.jit(layer.init)(jax.random.key(0), jnp.asarray(x, jnp.float32))
  # Same parameters and initialisation as the nn.Conv it stands for.
  ref = jax.jit(flax_layer.init)(jax.random.key(0), jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(ref["params"]["kernel"], variables["params"]["kernel"])
  params = jax.tree.map(np.asarray, variables["params"])
  params["bias"] = np.arange(params["bias"].size, dtype=np.float32) / 10
  # Traced inside the context, so the compiled functions use its precision.
  with jax.default_matmul_precision("highest"):
    got = np.asarray(jax.jit(layer.apply)({"params": params}, jnp.asarray(x, jnp.float32)))
    want = _loop_conv_reference(x, params["kernel"], params["bias"], stride, pad)
    np.testing.assert_allclose(got, want, atol=1e-4)

    # Gradients of input and kernel equal nn.Conv's (the kernel reaches the
    # space-to-depth form through a gather).
    def loss(module, p, x):
      return jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    x32 = jnp.asarray(x, jnp.float32)
    g = jax.jit(jax.grad(functools.partial(loss, layer), argnums=(0, 1)))(params, x32)
    h = jax.jit(jax.grad(functools.partial(loss, flax_layer), argnums=(0, 1)))(params, x32)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(h), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_space_to_depth_round_trip_and_pixel_order():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  s = layers.space_to_depth(x)
  assert s.shape == (2, 2, 3, 12)
  # Channel (p * 2 + q) * c + k of coarse pixel (m, n) is fine pixel (2m + p, 2n + q), channel k.
  np.testing.assert_array_equal(s[1, 1, 2, (1 * 2 + 0) * 3 + 2], x[1, 3, 4, 2])
  np.testing.assert_array_equal(layers.depth_to_space(s), x)
  with pytest.raises(ValueError, match="square odd kernel"):
    layers.space_to_depth_kernel(jnp.zeros((4, 4, 1, 1)))


def _random_variables(shapes, seed=0):
  """Variables of the given shapes with random values, none of them trivial.

  Compiling the model's own init (truncated-normal kernels) takes seconds on
  CPU, and it sets biases and BatchNorm statistics to 0 and 1, which the
  comparison then cannot see; any values serve to compare two layer choices.
  """
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(shape.shape[:-1])
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), shape.shape), shape.dtype)
    if name in ("var", "scale"):
      return jnp.asarray(rng.uniform(0.5, 1.5, shape.shape), shape.dtype)
    return jnp.asarray(rng.normal(0, 0.1, shape.shape), shape.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


_PLAIN_FORMS = {"upsample": "transpose", "full_res_conv": "xla", "downsample": "xla"}


@pytest.mark.parametrize("choice", [{"upsample": "transpose"}, {"full_res_conv": "space_to_depth"},
                                    {"downsample": "space_to_depth"}, {"full_res_conv": "matmul"},
                                    _PLAIN_FORMS, layers.AUTO_FORMS["cpu"],
                                    layers.AUTO_FORMS["gpu"]])
def test_cae_layer_choices_change_speed_not_results(choice):
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  default = models.create("TinyCAE")
  variables = _random_variables(jax.eval_shape(default.init, jax.random.key(0), x))
  chosen = models.create("TinyCAE", **choice)
  # The same parameter tree: checkpoints move freely between choices.
  assert (jax.tree.structure(jax.eval_shape(chosen.init, jax.random.key(0), x))
          == jax.tree.structure(variables))
  a = jax.jit(default.apply)(variables, x)
  b = jax.jit(chosen.apply)(variables, x)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_cae_forms_on_cpu_trace_no_convolution_at_the_default_sizes():
  """On a CPU "auto" picks matmul forms throughout: XLA:CPU's convolutions are the slow part."""
  assert layers.auto_form("full_res_conv", "cpu") == "matmul"
  assert layers.auto_form("full_res_conv", "cuda") == layers.AUTO_FORMS["gpu"]["full_res_conv"]
  x = jnp.zeros((1, 32, 32, 3))
  for name in ("TinyCAE", "SmallCAE", "CAE"):
    model = models.create(name)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(v, model=model):
      y, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
      return jnp.sum(y)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables))
    assert ("conv_general_dilated" in jaxpr) == (jax.default_backend() != "cpu"), name


@pytest.mark.parametrize("attribute,allowed", [
    ("upsample", "transpose, subpixel, auto"),
    ("full_res_conv", "xla, space_to_depth, matmul, auto"),
    ("downsample", "xla, space_to_depth, auto"),
])
def test_cae_rejects_unknown_layer_impl(attribute, allowed):
  x = jnp.zeros((1, 16, 16, 3))
  # Raised while the module is traced: eval_shape runs nothing.
  with pytest.raises(ValueError, match=f"allowed: {allowed}"):
    jax.eval_shape(models.create("TinyCAE", **{attribute: "nearest"}).init, jax.random.key(0), x)
