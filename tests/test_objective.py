"""The denoising objective of the train and eval steps, pinned from outside (issue 25).

A denoising autoencoder is trained to map the *corrupted* image to the
*clean* one. Swapping the two (model fed the clean image, loss aimed at the
corrupted one) trains an autoencoder that learns to add noise, and MSE is
symmetric, so comparing loss values alone cannot tell the roles apart. These
tests use a model with two scalar parameters, ``y = a * x + b`` (plus a shift
in train mode only), whose gradient is written out by hand: the updated ``a``
and ``b`` say which image went in and which was the target.

The corruption is random noise followed by a blur, so it depends on the
per-example keys; the keys are derived here with ``jax.random`` directly
(``split(rng)`` into the corruption and sampling keys, then example ``i`` gets
``fold_in(corruption_key, i)``), not with the library's helper.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from skimage.metrics import structural_similarity

import jax_dae

SPEC = "gaussian_noise(sigma=0.2)|gaussian_blur(kernel=3,sigma=1)"
A, B = 1.5, 0.125  # The model's parameters; neither 1 nor 0 (and exact in float32).
TRAIN_SHIFT = 0.25  # Added in train mode only: pins train=True / train=False.
LR = 0.1
SHAPE = (4, 16, 16, 3)  # 16x16: SSIM's 11x11 window fits.


class Affine(nn.Module):
  """``y = a * x + b`` with scalar parameters (+ ``TRAIN_SHIFT`` when ``train``)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = self.param("a", nn.initializers.constant(A), ())
    b = self.param("b", nn.initializers.constant(B), ())
    return a * x + b + (TRAIN_SHIFT if train else 0.0)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)


def _state():
  state = jax_dae.init_state(Affine(), optax.sgd(LR), SHAPE[1:], jax.random.key(0))
  assert {k: float(v) for k, v in state.params.items()} == {"a": A, "b": B}
  return state


def _example_keys(rng, n):
  """The step's per-example corruption keys, derived with jax.random only."""
  corrupt_key, _ = jax.random.split(rng)
  return jnp.stack([jax.random.fold_in(corrupt_key, i) for i in range(n)])


def _noisy(keys, clean):
  return np.asarray(jax_dae.corruptions.parse(SPEC)(keys, jnp.asarray(clean)), np.float64)


def test_model_input_is_the_corrupted_image_and_target_the_clean_one(images):
  clean = images.astype(np.float32) / 255
  rng = jax.random.key(7)
  noisy = _noisy(_example_keys(rng, len(images)), clean)
  # The keys matter: examples get different noise, and keys derived another
  # way (no split) give other noise, so the comparisons below would see it.
  assert np.abs(noisy[0] - noisy[1] - (clean[0] - clean[1])).mean() > 0.01
  other = _noisy(jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(4)), clean)
  assert np.abs(other - noisy).mean() > 0.01

  def spy_loss(reconstruction, target, aux):
    del aux
    # What the loss saw comes back with the step's metrics.
    value = jnp.mean(jnp.square(reconstruction - target))
    return value, {"reconstruction": reconstruction, "target": target}

  step = jax_dae.make_train_step(loss_fn=spy_loss, corrupt=jax_dae.corruptions.parse(SPEC))
  _, seen = jax.jit(step)(_state(), images, rng)
  model_input = (np.asarray(seen["reconstruction"], np.float64) - B - TRAIN_SHIFT) / A
  np.testing.assert_allclose(model_input, noisy, atol=1e-6)
  np.testing.assert_allclose(seen["target"], clean, atol=1e-7)


def test_loss_and_update_equal_the_hand_computed_denoising_gradient(images):
  clean = images.astype(np.float64) / 255
  rng = jax.random.key(3)
  noisy = _noisy(_example_keys(rng, len(images)), clean.astype(np.float32))
  step = jax_dae.make_train_step(loss_fn=jax_dae.losses.create("mse"),
                                 corrupt=jax_dae.corruptions.parse(SPEC))
  state, metrics = jax.jit(step)(_state(), images, rng)

  # L = mean((a * noisy + b + shift - clean)^2) and its gradient, by hand.
  residual = A * noisy + B + TRAIN_SHIFT - clean
  want_loss = np.mean(residual**2)
  grad_a, grad_b = np.mean(2 * residual * noisy), np.mean(2 * residual)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["mse"], want_loss, rtol=1e-5)
  # SGD: new = old - LR * grad; compared as the step taken, which is not
  # near zero even where a parameter passes through it.
  np.testing.assert_allclose((A - float(state.params["a"])) / LR, grad_a, rtol=1e-5)
  np.testing.assert_allclose((B - float(state.params["b"])) / LR, grad_b, rtol=1e-5)
  assert int(state.step) == 1

  # The swapped objective (clean in, corrupted as target) has the same kind of
  # loss but another gradient; make sure the data tells them apart.
  swapped = A * clean + B + TRAIN_SHIFT - noisy
  assert abs(np.mean(2 * swapped * clean) - grad_a) > 100 * 1e-5 * abs(grad_a)
  assert abs(np.mean(2 * swapped) - grad_b) > 100 * 1e-5 * abs(grad_b)


def test_eval_metrics_are_of_the_reconstruction_of_the_corrupted_input(images):
  clean = images.astype(np.float64) / 255
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(11), jnp.arange(len(images)))
  noisy = _noisy(keys, clean.astype(np.float32))
  eval_step = jax_dae.make_eval_step(corrupt=jax_dae.corruptions.parse(SPEC))
  out = jax.jit(eval_step)(_state(), images, keys)

  reconstruction = A * noisy + B  # train=False: no shift.
  for prefix, image in (("", reconstruction), ("input_", noisy)):
    mse = np.mean((image - clean) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(out[f"{prefix}mse"], mse, rtol=1e-5, err_msg=prefix)
    np.testing.assert_allclose(out[f"{prefix}psnr"], 10 * np.log10(1 / mse), atol=1e-4,
                               err_msg=prefix)
    ssim = [structural_similarity(x, c, gaussian_weights=True, sigma=1.5, data_range=1.0,
                                  use_sample_covariance=False, channel_axis=-1)
            for x, c in zip(image, clean, strict=True)]
    np.testing.assert_allclose(out[f"{prefix}ssim"], ssim, atol=2e-5, err_msg=prefix)
  # Per example, not per batch: the images' metrics differ.
  assert np.ptp(np.asarray(out["input_mse"])) > 0
