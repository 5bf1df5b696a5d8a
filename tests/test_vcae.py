"""Variational CAE: latent shapes, sampling vs evaluation, the sown KL, a short training run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jax_dae import losses, models, steps
from jax_dae.models import cae


def test_gaussian_kl_hand_computed():
  mean = jnp.array([[1.0, 0.0]])
  logvar = jnp.array([[0.0, np.log(2.0)]])
  # 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - log 2)
  expected = 0.5 + 0.5 * (1.0 - np.log(2.0))
  np.testing.assert_allclose(cae.gaussian_kl(mean, logvar), [expected], rtol=1e-6)
  np.testing.assert_allclose(cae.gaussian_kl(jnp.zeros((3, 4, 4, 2)), jnp.zeros((3, 4, 4, 2))),
                             np.zeros(3))


def test_full_size_latent_is_14x14x256():
  model = models.create("VCAE")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))
  params = shapes["params"]
  assert params["latent_mean"]["kernel"].shape == (1, 1, 256, 256)
  assert params["latent_logvar"]["kernel"].shape == (1, 1, 256, 256)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 112, 112, 3))), shapes)
  assert out.shape == (2, 112, 112, 3)


def _key(seed: int) -> jax.Array:
  # The "rbg" generator compiles in a fraction of threefry's time on CPU; these
  # tests need keys, not a particular stream.
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def tiny():
  model = models.create("TinyVCAE")
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 16, 16, 3)), train=False))
  variables = init(_key(0))
  images = np.random.default_rng(1).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  return model, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, images


def test_training_samples_and_evaluation_decodes_the_mean(tiny):
  model, variables, images = tiny

  @jax.jit
  def run(key):
    out, updates = model.apply(variables, images, train=True, mutable=["batch_stats", "aux"],
                               rngs={"sample": key})
    return out, updates["aux"]

  evaluate = jax.jit(lambda x: model.apply(variables, x, train=False))

  a, aux_a = run(_key(2))
  b, aux_b = run(_key(3))
  assert not np.allclose(a, b)  # different noise, different reconstruction
  np.testing.assert_allclose(aux_a["kl"][0], aux_b["kl"][0])  # KL does not depend on the draw
  assert float(aux_a["kl"][0]) > 0
  # Evaluation needs no rng and is deterministic.
  e1 = evaluate(images)
  e2 = evaluate(images)
  np.testing.assert_array_equal(e1, e2)
  assert e1.shape == images.shape and float(e1.min()) >= 0 and float(e1.max()) <= 1
  with pytest.raises(Exception, match="sample"):
    model.apply(variables, images, train=True, mutable=["batch_stats", "aux"])


def test_sown_kl_is_the_batch_mean_of_the_summed_kl(tiny):
  model, variables, images = tiny
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["aux", "intermediates"],
                                              capture_intermediates=True))(variables, images)
  inter = state["intermediates"]
  mean = inter["latent_mean"]["__call__"][0]
  logvar = inter["latent_logvar"]["__call__"][0]
  kl = 0.5 * np.sum(np.square(mean) + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(state["aux"]["kl"][0], kl.mean(), rtol=1e-5)


def test_train_step_loss_decreases_and_reports_kl(tiny):
  """20 Adam steps of TinyVCAE on a fixed 16x16 batch; the KL is one of the loss terms."""
  model, variables, _ = tiny
  state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"], tx=optax.adam(3e-3))
  loss_fn = losses.create(ml_collections.ConfigDict({"name": "mse", "kl_weight": 1e-3}))
  step = steps.make_train_step(loss_fn=loss_fn, corrupt=lambda keys, x: x)
  # A smooth fixed batch (a learnable target for a tiny model).
  yy, xx = jnp.meshgrid(jnp.linspace(0, 1, 16), jnp.linspace(0, 1, 16), indexing="ij")
  images = jnp.stack([jnp.stack([xx, yy, (xx + yy) / 2], -1) * s for s in (0.4, 0.6, 0.8, 1.0)])

  @jax.jit
  def run(state):
    def body(state, i):
      return step(state, images, jax.random.fold_in(_key(1), i))

    return jax.lax.scan(body, state, jnp.arange(20))

  _, out = run(state)
  loss = np.asarray(out["loss"])
  assert "kl" in out and np.all(np.isfinite(np.asarray(out["kl"])))
  np.testing.assert_allclose(loss, np.asarray(out["mse"]) + 1e-3 * np.asarray(out["kl"]),
                             rtol=1e-5)
  assert loss[-3:].mean() < 0.7 * loss[:3].mean(), loss


def test_vcae_config_builds():
  from configs import lfw_vcae

  config = lfw_vcae.get_config()
  assert config.model.name == "VCAE"
  np.testing.assert_allclose(config.loss.kl_weight, 2 * 0.05**2 / (112 * 112 * 3))
  assert lfw_vcae.get_config("kl_weight=0.01,runlocal").loss.kl_weight == 0.01
  assert lfw_vcae.get_config("sigma=0.1").loss.kl_weight == pytest.approx(2 * 0.01 / 37632)
  assert lfw_vcae.get_config("runlocal").model.name == "TinyVCAE"
  with pytest.raises(ValueError, match="Unknown config argument"):
    lfw_vcae.get_config("beta=2")
  losses.create(config.loss)
  assert "VCAE" in models.available() and "TinyVCAE" in models.available()
