"""UpConv2x: both implementations equal a transposed convolution written as a scatter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dae import models
from jax_dae.models.layers import UpConv2x


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
  variables = layer.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
  params = jax.tree.map(np.asarray, variables["params"])
  params["bias"] = np.arange(4, dtype=np.float32) / 10  # a bias that is not zero
  got = np.asarray(layer.apply({"params": params}, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, _scatter_reference(x, params["kernel"], params["bias"]),
                             atol=1e-5)
  flax_layer = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
  np.testing.assert_allclose(got, flax_layer.apply({"params": params}, x.astype(np.float32)),
                             atol=1e-5)
  # Same parameters and initialisation as nn.ConvTranspose.
  ref = flax_layer.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(ref["params"]["kernel"], variables["params"]["kernel"])


def test_cae_upsample_choice_changes_speed_not_results():
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = models.create("TinyCAE").init(jax.random.key(0), x)
  a = models.create("TinyCAE", upsample="transpose").apply(variables, x)
  b = models.create("TinyCAE", upsample="subpixel").apply(variables, x)
  np.testing.assert_allclose(a, b, atol=1e-5)
  with pytest.raises(ValueError, match="allowed: transpose, subpixel"):
    models.create("TinyCAE", upsample="nearest").init(jax.random.key(0), x)
