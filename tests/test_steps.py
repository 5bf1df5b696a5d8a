"""The layered step API: user models (Linen with Dropout, flax.nnx), the public loss and
gradients (gradient accumulation), explicit auxiliary terms, and one-line errors for
inputs and parallel set-ups that cannot be right (issue 19).

The parallel styles themselves are compared with one device in tests/test_api.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dae
from jax_dae import corruptions, losses, metrics, steps

SHAPE = (8, 16, 16, 3)  # 16x16: SSIM's 11x11 window fits.


def _images(seed=0):
  return np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)


def _identity(keys, images):
  del keys
  return images


class LinenDropout(nn.Module):
  """A user's Linen denoiser with Dropout (the "dropout" PRNG stream)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(nn.Conv(8, (3, 3))(x))
    y = nn.Dropout(0.2, deterministic=not train)(y)
    return nn.sigmoid(nn.Conv(3, (3, 3))(y))


class NNXDenoiser(nnx.Module):
  """A user's flax.nnx denoiser with BatchNorm, Dropout and a sown auxiliary term."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.conv2 = nnx.Conv(8, 3, (3, 3), rngs=rngs)

  def __call__(self, x):
    y = nnx.relu(self.norm(self.conv1(x)))
    self.sow("aux", "l2", jnp.mean(jnp.square(y)))
    return nnx.sigmoid(self.conv2(self.drop(y)))


@pytest.mark.parametrize("kind", ["linen_dropout", "nnx"])
def test_user_models_train_through_the_public_api(kind):
  if kind == "nnx":
    model = NNXDenoiser(nnx.Rngs(0))  # Taken directly: init_state wraps it (from_nnx).
    loss_fn = losses.create("mse", aux_weights={"l2": 1e-3})
  else:
    model = LinenDropout()
    loss_fn = losses.create("mse")
  state = jax_dae.init_state(model, optax.adam(1e-2), SHAPE[1:], jax.random.key(0))
  # The identity "corruption": loss differences below come from dropout alone.
  step = jax.jit(jax_dae.make_train_step(loss_fn=loss_fn, corrupt=_identity))
  images = _images()

  # Dropout draws from the step's key: another key, another mask; the same, the same.
  _, a = step(state, images, jax.random.key(1))
  _, b = step(state, images, jax.random.key(2))
  _, c = step(state, images, jax.random.key(1))
  assert float(a["loss"]) != float(b["loss"])
  assert float(a["loss"]) == float(c["loss"])

  seen = []
  for i in range(25):
    state, out = step(state, images, jax.random.key(10 + i))
    seen.append(float(out["loss"]))
  assert np.mean(seen[-3:]) < 0.7 * np.mean(seen[:3]), seen
  if kind == "nnx":
    assert "l2" in out  # The sown term, weighted explicitly, is logged.
    assert float(jnp.abs(state.batch_stats["norm"]["mean"]).max()) > 1e-3  # BatchNorm updated.
    # Evaluation runs the module in eval mode (no dropout): deterministic.
    eval_step = jax.jit(jax_dae.make_eval_step(corrupt=_identity))
    keys = corruptions.example_keys(jax.random.key(0), jnp.arange(SHAPE[0]))
    first, second = eval_step(state, images, keys), eval_step(state, images, keys)
    np.testing.assert_array_equal(first["mse"], second["mse"])
    assert float(first["mse"].mean()) < seen[0]


def test_nnx_adapter_applies_the_module_as_it_is():
  # No BatchNorm (the steps still pass "batch_stats": {}), no train argument.
  module = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  state = jax_dae.init_state(module, optax.sgd(0.1), (2, 2, 3), jax.random.key(0))
  assert state.batch_stats == {} and set(state.params) == {"kernel", "bias"}
  x = jnp.linspace(0, 1, 24).reshape(2, 2, 2, 3)
  np.testing.assert_allclose(state.apply_fn(state.variables, x, train=False), module(x),
                             rtol=1e-6)
  with pytest.raises(TypeError, match="flax.nnx.Module"):
    jax_dae.from_nnx(LinenDropout())


class Smooth(nn.Module):
  """No BatchNorm, no Dropout: the loss is a mean over examples, so micro-batches add up."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.sigmoid(nn.Conv(3, (3, 3))(nn.relu(nn.Conv(8, (3, 3))(x))))


def test_gradient_accumulation_with_the_public_loss_equals_one_batch():
  corrupt = corruptions.parse("gaussian_noise(sigma=0.1)|salt_pepper(amount=0.05)")
  compute_loss = jax_dae.make_loss_fn(loss_fn=losses.create("mse"))
  state = jax_dae.init_state(Smooth(), optax.sgd(0.1), SHAPE[1:], jax.random.key(0))

  def loss_and_grad(state, images, key, size, offset):
    clean = steps.to_float(images)
    keys = corruptions.example_keys(key, steps.example_index(size, offset=offset))
    rngs = steps.model_rngs(key)
    return jax_dae.loss_and_grad(compute_loss, state, corrupt(keys, clean), clean, rngs)

  @jax.jit
  def both(state, images, key):
    (whole, _), grads = loss_and_grad(state, images, key, 8, 0)
    (first, _), g1 = loss_and_grad(state, images[:4], key, 4, 0)
    (second, _), g2 = loss_and_grad(state, images[4:], key, 4, 4)
    accumulated = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    return (whole, (first + second) / 2), (grads, accumulated)

  (whole, accumulated_loss), (grads, accumulated) = both(state, _images(), jax.random.key(3))
  np.testing.assert_allclose(accumulated_loss, whole, rtol=0, atol=1e-6)
  for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(accumulated), strict=True):
    np.testing.assert_allclose(a, g, rtol=0, atol=1e-6)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3


class Sows(nn.Module):
  """Sows a KL-like term, as VCAE does."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    y = nn.Dense(3)(x)
    self.sow("aux", "kl", jnp.mean(jnp.square(y)))
    return y


def test_auxiliary_terms_are_weighted_explicitly():
  model = Sows()
  state = jax_dae.init_state(model, optax.sgd(0.1), (2, 2, 3), jax.random.key(0))
  images = jnp.linspace(0, 1, 24).reshape(2, 2, 2, 3)
  rngs = steps.model_rngs(jax.random.key(1))

  def run(**kwargs):
    loss_kwargs = kwargs.pop("loss", {})
    compute_loss = jax_dae.make_loss_fn(loss_fn=losses.create("mse", **loss_kwargs), **kwargs)
    return compute_loss(state.params, state, images, images, rngs)

  with pytest.raises(ValueError, match="sowed the auxiliary loss term 'kl'") as error:
    run()
  assert "\n" not in str(error.value)
  in_loss, _ = run(loss={"kl_weight": 0.25})
  in_loss_by_name, _ = run(loss={"aux_weights": {"kl": 0.25}})
  in_step, aux = run(aux_weights={"kl": 0.25})
  np.testing.assert_allclose([in_loss_by_name, in_step], [in_loss, in_loss], rtol=1e-7)
  np.testing.assert_allclose(in_loss, aux["metrics"]["mse"] + 0.25 * aux["metrics"]["kl"],
                             rtol=1e-6)
  assert float(aux["metrics"]["kl"]) > 0
  # Collections other than batch_stats come back too.
  assert "kl" in aux["sown"]["aux"]
  with pytest.raises(ValueError, match="both set"):
    losses.create("mse", kl_weight=1.0, aux_weights={"kl": 1.0})


def test_eval_step_takes_a_state_or_a_variables_dict():
  model = jax_dae.models.create("TinyCAE")
  state = jax_dae.init_state(model, optax.sgd(0.1), SHAPE[1:], jax.random.key(0))
  corrupt = corruptions.parse("gaussian_noise(sigma=0.1)")
  keys = corruptions.example_keys(jax.random.key(4), jnp.arange(SHAPE[0]))
  eval_step = jax.jit(jax_dae.make_eval_step(corrupt=corrupt, apply_fn=model.apply))
  from_state = eval_step(state, _images(), keys)
  from_dict = eval_step({"params": state.params, "batch_stats": state.batch_stats}, _images(),
                        keys)
  for name, value in from_state.items():
    np.testing.assert_allclose(from_dict[name], value, rtol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="apply_fn=model.apply"):
    jax_dae.make_eval_step(corrupt=corrupt)(state.variables, _images(), keys)


# ---------------------------------------------------------------------------
# One-line errors. Traced only (jax.eval_shape): the checks are on static
# shapes and dtypes, so they fire at trace time and cost nothing at run time.
# ---------------------------------------------------------------------------


def _one_line_error(fn, *args, match):
  with pytest.raises(ValueError, match=match) as error:
    jax.eval_shape(fn, *args)
  assert "\n" not in str(error.value), str(error.value)


def _abstract(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


@pytest.fixture(scope="module")
def tiny():
  corrupt = corruptions.parse("gaussian_noise(sigma=0.1)")
  model = jax_dae.models.create("TinyCAE")
  state = jax.eval_shape(lambda k: jax_dae.init_state(model, optax.sgd(0.1), SHAPE[1:], k),
                         jax.random.key(0))
  return corrupt, state


def test_bad_inputs_give_one_line_errors(tiny):
  corrupt, _ = tiny
  keys = jax.random.split(jax.random.key(0), SHAPE[0])
  images = _abstract(SHAPE)
  _one_line_error(corrupt, keys, _abstract(SHAPE, jnp.uint8), match="float in \\[0, 1\\]")
  _one_line_error(corrupt, jax.random.key(0), images, match="one PRNG key per image")
  _one_line_error(corrupt, keys[:3], images, match="one PRNG key per image")
  _one_line_error(corrupt, keys, _abstract(SHAPE[1:]), match="\\[B, H, W, C\\]")
  _one_line_error(corruptions.example_keys, keys, jnp.arange(8), match="one PRNG key")
  _one_line_error(metrics.psnr, _abstract(SHAPE, jnp.uint8), _abstract(SHAPE, jnp.uint8),
                  match="psnr: images must be float")
  _one_line_error(metrics.psnr, images, _abstract((8, 16, 16, 1)), match="one shape")
  _one_line_error(metrics.image_metrics, _abstract((2, 8, 8, 3)), _abstract((2, 8, 8, 3)),
                  match="11x11 window")
  mse = losses.create("mse")
  _one_line_error(lambda a, b: mse(a, b, {}), images, _abstract(SHAPE, jnp.uint8),
                  match="clean images must be float")
  _one_line_error(lambda a, b: mse(a, b, {}), images, _abstract((8, 16, 16, 1)),
                  match="shapes differ")
  _one_line_error(steps.to_float, _abstract(SHAPE, jnp.int32), match="uint8")
  # The measured symptoms are gone: uint8 is refused, not rounded or scored.
  assert steps.to_float(np.full((1, 1, 1, 1), 255, np.uint8)).item() == 1.0


def test_parallel_setups_that_cannot_be_right_raise_before_running(tiny):
  corrupt, state = tiny
  loss_fn = losses.create("mse")
  images, rng = _abstract(SHAPE, jnp.uint8), jax.random.key(0)
  axis_step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt, axis_name="data")
  plain_step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt)
  # axis_name under jit, where no axis is mapped.
  _one_line_error(axis_step, state, images, rng, match="'data' is not mapped here")

  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))

  def mapped(step, apply_fn):
    fn = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=(P(), P()))
    return lambda s, x, r: fn(s.replace(apply_fn=apply_fn), x, r)

  synced = jax_dae.models.create("TinyCAE", bn_axis_name="data").apply
  # shard_map (check_vma=True) without axis_name: the gradients arrive summed.
  _one_line_error(mapped(plain_step, synced), state, images, rng, match="arrive summed")
  # The axis is named, but the model keeps per-device BatchNorm statistics.
  _one_line_error(mapped(axis_step, state.apply_fn), state, images, rng,
                  match="bn_axis_name='data'")
  # Named and synced: it traces.
  jax.eval_shape(mapped(axis_step, synced), state, images, rng)


def test_seed_model_steps_trace_on_explicit_mesh_axes(tiny):
  # TinyCAE's space-to-depth convolutions reshape the batch, which sharding in
  # types refuses on Explicit axes; the step runs the model on Auto axes.
  corrupt, state = tiny
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))

  def place(x, spec):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

  state = jax.tree.map(lambda x: place(x, P()), state)
  images = place(_abstract(SHAPE, jnp.uint8), P("data"))
  step = jax_dae.make_train_step(loss_fn=losses.create("mse"), corrupt=corrupt)
  new_state, out = jax.eval_shape(step, state, images, jax.random.key(0))
  assert out["loss"].shape == ()
  for before, after in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params),
                           strict=True):
    assert after.shape == before.shape and not any(after.sharding.spec)  # Replicated.
  # Evaluation too (the model, then SSIM's convolutions): per-image metrics split like the batch.
  keys = jax.random.split(jax.random.key(0), SHAPE[0])
  out = jax.eval_shape(jax_dae.make_eval_step(corrupt=corrupt), state, images, keys)
  assert {v.shape for v in out.values()} == {(SHAPE[0],)}
  assert {v.sharding.spec[0] for v in out.values()} == {"data"}


def test_the_weight_average_follows_its_recurrence_and_is_what_evaluation_uses():
  model = LinenDropout()
  tx = optax.adam(1e-2)
  state = steps.init_state(model, tx, SHAPE[1:], jax.random.key(0), ema=True)
  plain = steps.init_state(model, tx, SHAPE[1:], jax.random.key(0))
  assert not hasattr(plain, "ema_params") and plain.for_evaluation() is plain
  step = jax.jit(steps.make_train_step(loss_fn=losses.create("mse"),
                                       corrupt=_identity, ema_decay=0.9))
  expected = jax.tree.map(np.asarray, state.params)
  for t in range(12):
    state, _ = step(state, _images(t), jax.random.key(t))
    d = min(0.9, (1 + t + 1) / (10 + t + 1))  # the decay after update t + 1
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * np.asarray(p), expected,
                            state.params)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(state.ema_params)[0], jax.tree.leaves(state.params)[0])
  evaluated = state.for_evaluation()
  assert evaluated.params is state.ema_params and evaluated.opt_state is state.opt_state
