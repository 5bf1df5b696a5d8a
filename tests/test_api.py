"""The public train step under jit + shardings, shard_map and pmap; the README example."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dae

README = Path(__file__).resolve().parents[1] / "README.md"
AXIS = "data"


@pytest.fixture(scope="module")
def parts():
  # Random noise, not blur: the step folds each example's *global* index into
  # its key, so the noise is the same however the batch is split.
  corrupt = jax_dae.corruptions.parse("gaussian_noise(sigma=0.1)")
  loss_fn = jax_dae.losses.create("mse")
  images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
  return corrupt, loss_fn, images


def _state(bn_axis_name=None):
  # SGD: Adam would turn rounding noise in near-zero gradients into full steps.
  model = jax_dae.models.create("TinyCAE", bn_axis_name=bn_axis_name)
  return jax_dae.init_state(model, optax.sgd(0.1), (16, 16, 3), jax.random.key(0))


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)),
                  jax.tree.leaves((b.params, b.batch_stats)), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_step_is_the_same_under_jit_shard_map_and_pmap(parts):
  corrupt, loss_fn, images = parts
  rng = jax.random.key(42)
  assert jax.device_count() == 8

  # Reference: one device, the whole batch.
  step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt)
  ref, ref_metrics = jax.jit(step)(_state(), images, rng)

  # jit with the batch sharded over 8 devices; XLA inserts the reductions.
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(images, NamedSharding(mesh, P(AXIS)))
  state8 = jax.device_put(_state(), NamedSharding(mesh, P()))
  out, _ = jax.jit(step)(state8, sharded, rng)
  _assert_same(ref, out)

  # shard_map / pmap: the step averages over the named axis itself, and the
  # model averages BatchNorm statistics over it.
  axis_step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt, axis_name=AXIS)
  # check_vma=False: pmap's contract (each shard's gradient is local until
  # the step's pmean), which the axis_name step is written for.
  mapped = jax.jit(jax.shard_map(axis_step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                                 out_specs=(P(), P()), check_vma=False))
  out, metrics = mapped(_state(AXIS), sharded, rng)
  _assert_same(ref, out)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)

  replicated = jax.tree.map(lambda x: np.stack([x] * 8), _state(AXIS))
  pmapped = jax.pmap(axis_step, axis_name=AXIS, in_axes=(0, 0, None))
  out, metrics = pmapped(replicated, images.reshape(8, 2, 16, 16, 3), rng)
  _assert_same(ref, jax.tree.map(lambda x: x[0], out))
  np.testing.assert_allclose(metrics["loss"][0], ref_metrics["loss"], rtol=1e-5)


def test_gradients_flow_through_the_public_pieces(parts):
  corrupt, loss_fn, images = parts
  state = _state()
  clean = images[:4].astype(np.float32) / 255

  def loss(params):
    noisy = corrupt(jax_dae.corruptions.example_keys(jax.random.key(0), jnp.arange(4)), clean)
    out = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, noisy)
    return loss_fn(out, clean, {})[0]

  grads = jax.grad(loss)(state.params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_readme_example_runs_as_written():
  text = README.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README.md has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
  assert namespace["losses_seen"][-1] < namespace["losses_seen"][0]
