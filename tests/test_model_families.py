"""S1/S2/S3 model families: sizes against the seeds, shapes, ranges, and learning.

Parameter counts use ``jax.eval_shape`` (the Graz networks have 50M
parameters); everything that runs for real uses the tiny presets or the small
seed models.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jax_dae import models
from jax_dae.models import dual, graz, inventory, mnist

_GRAZ = (64, 64, 3)
_DUAL = (100, 100, 1)
_MNIST = (28, 28, 1)
_OURS = ("jax_dae.models.graz", "jax_dae.models.dual", "jax_dae.models.mnist")


def _key(seed=0):
  # The "rbg" generator: Flax inits with the default threefry compile for
  # seconds per model on CPU; rbg keeps this file within its time budget.
  return jax.random.key(seed, impl="rbg")


def _smooth_images(n, shape, seed=0):
  """Blocky random images in [0, 1]: learnable structure for a few steps."""
  height, width, channels = shape
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 1, (n, -(-height // 4), -(-width // 4), channels))
  return jnp.asarray(np.kron(small, np.ones((1, 4, 4, 1)))[:, :height, :width], jnp.float32)


@pytest.fixture(scope="module")
def rows():
  """The inventory the script prints, by name (one abstract trace per model)."""
  return {row.name: row for row in inventory.rows()}


# ---------------------------------------------------------------------------
# Parameter counts.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, trainable, keras_total",
    [
        ("GrazAE_net1", 50_704_803, 50_722_307),
        ("GrazAE_net2", 50_704_803, 50_722_307),
        ("GrazAE_net3", 50_680_971, 50_698_475),
    ],
)
def test_graz_counts_match_seed_table1_exactly(rows, name, trainable, keras_total):
  # Seed 001's Table 1 counts Keras's *trainable* parameters (BN gamma/beta
  # included, moving mean/variance not): exactly Flax's `params`.
  row = rows[name]
  assert row.input_shape == _GRAZ
  assert row.params == trainable == row.published.count
  # Keras's "Total params" adds the BN moving statistics (batch_stats here).
  assert row.params + row.batch_stats == keras_total


@pytest.mark.parametrize("name, published", [("DualAE", 51_426), ("DualAE_sep", 36_685)])
def test_dual_second_stage_matches_exactly(rows, name, published):
  row = rows[name + ":second"]
  assert row.input_shape == _DUAL
  assert row.params == published == row.published.count


@pytest.mark.parametrize(
    "name, ours, seed",
    [
        # Single AE: reconstructed layers (module docstring of dual.py).
        ("SingleAE", 35_026, 36_386),
        ("SingleAE_sep", 15_510, 15_760),
        ("DualAE", 86_452, 87_812),
        ("DualAE_sep", 52_195, 52_445),
        # Plus reconstructed 1x1 skip adapters.
        ("DualSkipAE", 89_677, 91_488),
        ("DualSkipAE_sep", 55_520, 56_231),
    ],
)
def test_dual_totals_against_seed(rows, name, ours, seed):
  row = rows[name]
  assert (row.params, row.batch_stats) == (ours, 0)
  assert row.published.count == seed
  assert row.difference == ours - seed


def test_dual_is_single_plus_second_stage_as_in_seed(rows):
  # The seed's totals differ by exactly the second stage; so do ours.
  for suffix in ("", "_sep"):
    single, total = rows["SingleAE" + suffix], rows["DualAE" + suffix]
    second = rows["DualAE" + suffix + ":second"]
    assert total.params == single.params + second.params
    assert total.published.count == single.published.count + second.published.count


def test_inventory_covers_every_registered_model(rows):
  assert set(models.available()) <= set(rows)
  for name in models.available():
    if inventory.model_class(models._REGISTRY[name]).__module__ in _OURS:
      assert rows[name].params > 0 and rows[name].input_shape is not None
      assert isinstance(models.create(name), nn.Module)
  assert rows["SingleAE"].latents == {"latent": (1, 23, 23, 25)}
  assert rows["DualAE"].latents == {"first/latent": (1, 23, 23, 25),
                                    "second/latent": (1, 47, 47, 50)}
  assert rows["GrazAE"].latents == {"latent": (1, 1000)}
  assert rows["GrazFCAE"].latents == {"latent": (1, 8, 8, 64)}


# ---------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3, 5])
@pytest.mark.parametrize("size", [13, 8, 5])
def test_mnist_latent_shapes(rows, depth, size):
  name = f"MnistDAE_d{depth}_l{size}"
  model = models.create(name)
  x = jax.ShapeDtypeStruct((2, *_MNIST), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_key(), x), x)
  latent = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=mnist.MnistDAE.encode), variables, x
  )
  assert latent.shape == (2, size, size, 4)
  assert rows[name].latents == {"latent": (1, size, size, 4)}
  assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == x.shape


def test_mnist_rejects_unknown_layout():
  with pytest.raises(ValueError, match="depth=2"):
    mnist.MnistDAE(depth=2).init(_key(), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize(
    "name, shape",
    [("GrazAE", _GRAZ), ("GrazAE_net2", _GRAZ), ("GrazAE_net3", _GRAZ), ("GrazFCAE", _GRAZ),
     ("SingleAE_sep", _DUAL), ("DualSkipAE", _DUAL), ("MnistDAE_d5_l5", _MNIST)],
)
def test_seed_models_keep_shape_with_trainer_kwargs(name, shape):
  # The trainer passes dtype, out_channels and (under pmap) bn_axis_name.
  model = models.create(name, dtype=jnp.bfloat16, out_channels=shape[-1], bn_axis_name="batch")
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_key(), x), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out.shape == (2, *shape) and out.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_graz_rejects_bad_decoder_type():
  with pytest.raises(ValueError, match="decoder_type"):
    graz.GrazAE(decoder_type=4).init(_key(), jnp.zeros((1, 64, 64, 3)))


def test_dual_rejects_sizes_it_cannot_restore():
  with pytest.raises(ValueError, match="multiples of 4"):
    dual.SingleAE().init(_key(), jnp.zeros((1, 98, 98, 1)))


# ---------------------------------------------------------------------------
# Keras semantics of the transposed convolutions.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, kernel, stride, padding",
    [
        (functools.partial(graz._conv_t, strides=(2, 2)), 3, 2, "SAME"),
        (functools.partial(graz._conv_t, strides=(1, 1)), 3, 1, "SAME"),
        (lambda f, dtype: dual._conv_t(f, 3, 2, dtype=dtype), 3, 2, "VALID"),
        (lambda f, dtype: dual._conv_t(f, 4, 1, dtype=dtype), 4, 1, "VALID"),
    ],
)
def test_conv_transpose_is_tensorflows(layer, kernel, stride, padding):
  # TF's conv2d_transpose (Keras Conv2DTranspose) is the gradient of the
  # forward convolution with the same kernel, in Keras's (k, k, out, in) layout.
  n, c_in, c_out = 7, 3, 2
  x = jax.random.normal(jax.random.key(0), (1, n, n, c_in))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, c_out, c_in))
  size = n * stride if padding == "SAME" else (n - 1) * stride + kernel

  def forward(y):
    return lax.conv_general_dilated(y, w, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  _, vjp = jax.vjp(forward, jnp.zeros((1, size, size, c_out)))
  (expected,) = vjp(x)
  module = layer(c_out, dtype=jnp.float32)
  got = module.apply({"params": {"kernel": w, "bias": jnp.zeros(c_out)}}, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_separable_conv_is_depthwise_then_pointwise():
  layer = dual.SeparableConv(5, 3)
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
  variables = layer.init(jax.random.key(1), x)
  params = variables["params"]
  assert params["depthwise"]["kernel"].shape == (3, 3, 1, 2)
  assert "bias" not in params["depthwise"]
  assert params["pointwise"]["kernel"].shape == (1, 1, 2, 5)
  dw = params["depthwise"]["kernel"]
  expected = sum(
      lax.conv_general_dilated(x[..., c:c + 1], dw[..., c:c + 1], (1, 1), "VALID",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
      * params["pointwise"]["kernel"][0, 0, c]
      for c in range(2)
  ) + params["pointwise"]["bias"]
  np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Real runs: output range, and a few Adam steps on a fixed noisy batch lower
# each seed's loss (seed 001: MSE; seed 002: BCE; seed 003: MSE).
# ---------------------------------------------------------------------------


def _mse(y, t):
  return jnp.mean(jnp.square(y - t))


def _bce(y, t):
  y = jnp.clip(y, 1e-7, 1 - 1e-7)
  return -jnp.mean(t * jnp.log(y) + (1 - t) * jnp.log1p(-y))


_FAMILIES = {
    "graz": ("TinyGrazAE", {}, _GRAZ, _mse),
    "dual": ("TinyDualSkipAE", {}, _DUAL, _bce),
    "mnist": ("MnistDAE_d3_l8", {}, _MNIST, _mse),
}


@pytest.fixture(scope="module", params=sorted(_FAMILIES))
def family(request):
  name, kwargs, shape, loss_fn = _FAMILIES[request.param]
  model = models.create(name, **kwargs)
  clean = _smooth_images(4, shape)
  noisy = jnp.clip(clean + 0.2 * jax.random.normal(_key(1), clean.shape), 0, 1)
  variables = model.init(_key(), noisy)
  return model, variables, clean, noisy, loss_fn


def test_outputs_keep_shape_and_range(family):
  model, variables, _, noisy, _ = family

  @jax.jit
  def both_modes(variables, x):
    return [model.apply(variables, x, train=train, mutable=["batch_stats"])[0]
            for train in (False, True)]

  for out in both_modes(variables, noisy):
    assert out.shape == noisy.shape and out.dtype == jnp.float32
    assert bool(jnp.all((out >= 0) & (out <= 1)))


def test_separable_dual_keeps_shape_and_range():
  model = models.create("DualSkipAE_sep")
  images = _smooth_images(2, _DUAL)
  out = jax.jit(lambda x: model.apply(model.init(_key(), x), x))(images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert bool(jnp.all((out >= 0) & (out <= 1)))


def test_few_adam_steps_lower_the_loss(family):
  model, variables, clean, noisy, loss_fn = family
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def loss(params):
      out, updates = model.apply({"params": params, "batch_stats": stats}, noisy, train=True,
                                 mutable=["batch_stats"])
      return loss_fn(out, clean), updates.get("batch_stats", stats)

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, value

  # BCE does not reach 0 on grey targets: compare what is above its minimum.
  floor = float(loss_fn(clean, clean))
  losses = []
  for _ in range(10):
    params, stats, opt_state, value = step(params, stats, opt_state)
    losses.append(float(value) - floor)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.95 * losses[0], losses
