"""MnistDAE's output-bias initialisation (keeps the sigmoid from collapsing to 0)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dae.models import mnist


def test_default_output_bias_is_logit_of_mean_training_pixel():
  assert mnist.MnistDAE.output_bias_init == mnist.OUTPUT_BIAS_INIT
  np.testing.assert_allclose(1 / (1 + math.exp(-mnist.OUTPUT_BIAS_INIT)), 0.131, rtol=1e-6)


@pytest.mark.parametrize("depth, size", [(1, 13), (3, 8), (5, 5)])
@pytest.mark.parametrize("bias", [None, 0.0, -3.0])
def test_initial_output_is_sigmoid_of_output_bias(depth, size, bias):
  kwargs = {} if bias is None else {"output_bias_init": bias}
  expected_bias = mnist.OUTPUT_BIAS_INIT if bias is None else bias
  model = mnist.MnistDAE(depth=depth, latent_size=size, **kwargs)
  x = jnp.zeros((1, 28, 28, 1))
  params = model.init(jax.random.key(0), x)["params"]
  decoder = [params[f"decoder_{i}"]["bias"] for i in range(depth)]
  np.testing.assert_array_equal(decoder[-1], jnp.full((1,), expected_bias, jnp.float32))
  for hidden in decoder[:-1]:
    np.testing.assert_array_equal(hidden, 0.0)
  # A black image reaches the last layer as zeros, so only its bias is left.
  out = model.apply({"params": params}, x)
  np.testing.assert_allclose(out, jax.nn.sigmoid(jnp.float32(expected_bias)), rtol=1e-6)
