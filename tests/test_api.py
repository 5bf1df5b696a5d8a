"""The public train step under every parallelism style equals one device; the README example.

Three steps of a small BatchNorm denoiser with three random corruptions,
from the same state and keys, under: one device (the reference), ``jit`` with the
batch sharded over 8 devices on Auto and on Explicit mesh axes,
``shard_map`` with ``check_vma=True`` and ``False``, and ``pmap``. The
corruptions draw per example (noise, impulses, a square's position), so the
steps must give example ``i`` the same key however the batch is split.
(The model is smaller than TinyCAE to compile fast; TinyCAE itself runs on
an Explicit mesh in the README example, and tests/test_steps.py traces it.)

SGD results equal the reference within 1e-6, and so do Adam's with ``eps``
above the gradients' rounding noise. With Adam's default ``eps=1e-8`` they
cannot: some gradients are 0 in exact arithmetic (the conv biases that feed
a BatchNorm, which subtracts the batch mean) or by chance about 1e-9 (a
kernel tap that sees almost nothing), and what is computed there is rounding
noise that differs with each style's reduction order. Adam divides by the
gradient's running magnitude, so a noise gradient still moves its parameter
by up to the learning rate, and the next steps spread the difference. The
default-``eps`` run (under the jit styles only, for compile time) is held to
Adam's step bound (``_ADAM_STEP_BOUND``), and its first step, before any
spreading, to 1e-6 outside the elements whose gradient is noise.
"""

import re
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dae

README = Path(__file__).resolve().parents[1] / "README.md"
AXIS = "data"
SPEC = "gaussian_noise(sigma=0.1)|salt_pepper(amount=0.05)|coarse_dropout(n=1,size=4)"
STEPS = 3
LR = 1e-3  # Adam's.
# Adam's eps=1e-4 sits above the rounding noise of ~0 gradients (<= 1e-8
# here) and below the real ones (~1e-3): no amplification, and 1e-6 holds.
DEFAULT_EPS = "adam_default_eps"
OPTIMIZERS = {"sgd": optax.sgd(0.1), "adam": optax.adam(LR, eps=1e-4),
              DEFAULT_EPS: optax.adam(LR)}
# |Adam update| <= lr * C_t with C_t = sqrt(B_t * sum_i a_i^2 / b_i) / A_t by
# Cauchy-Schwarz, a_i, b_i the EMA weights of step i in m and v and A_t, B_t
# the bias corrections: C_1 = 1, C_2 = 1.0014, C_3 = 1.0036 for (0.9, 0.999).
# Two runs moving opposite ways differ by at most twice the sum.
_ADAM_STEP_BOUND = 2 * LR * (1 + 1.0014 + 1.0036)
_NOISE = 1e-6  # Gradients below this are rounding noise (real ones here: ~1e-3).


class BatchNormDAE(nn.Module):
  """Conv-BN-ReLU, strided Conv-BN-ReLU, transposed conv, conv: every conv bias but the
  last feeds a BatchNorm, as in the CAE family."""

  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    def norm(y):
      return nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name)(y)

    y = nn.relu(norm(nn.Conv(8, (3, 3))(x)))
    y = nn.relu(norm(nn.Conv(8, (3, 3), strides=2)(y)))
    y = nn.ConvTranspose(8, (3, 3), strides=(2, 2))(y)
    return nn.sigmoid(nn.Conv(3, (3, 3))(nn.relu(norm(y))))


def _both(step):
  """One function stepping the SGD and the Adam state: one compile per style."""

  def run(states, images, rng):
    out = {name: step(state, images, rng) for name, state in states.items()}
    return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}

  return run


def _three_steps(fn, states, images):
  """(states after the first step, states after the last, the last step's metrics)."""
  first = None
  for i in range(STEPS):
    states, metrics = fn(states, images, jax.random.key(100 + i))
    first = states if first is None else first
  return jax.device_get((first, states, metrics))


@pytest.fixture(scope="module")
def parts():
  corrupt = jax_dae.corruptions.parse(SPEC, (16, 16, 3))
  loss_fn = jax_dae.losses.create("mse")
  images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
  model = BatchNormDAE()
  init = jax.jit(lambda key: {name: jax_dae.init_state(model, tx, (16, 16, 3), key)
                              for name, tx in OPTIMIZERS.items()})
  states = jax.device_get(init(jax.random.key(0)))
  # The same parameters, the model averaging BatchNorm statistics over AXIS.
  axis_apply = BatchNormDAE(bn_axis_name=AXIS).apply
  # Compile time: the default-eps Adam only under the jit styles.
  axis_states = {k: s.replace(apply_fn=axis_apply) for k, s in states.items() if k != DEFAULT_EPS}
  step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt)
  axis_step = jax_dae.make_train_step(loss_fn=loss_fn, corrupt=corrupt, axis_name=AXIS)
  reference = _three_steps(jax.jit(_both(step)), states, images)
  return dict(images=images, states=states, axis_states=axis_states, step=step,
              axis_step=axis_step, reference=reference)


def _jit_sharded(parts, axis_type):
  mesh = jax.make_mesh((8,), (AXIS,), axis_types=(axis_type,))
  images = jax.device_put(parts["images"], NamedSharding(mesh, P(AXIS)))
  states = jax.device_put(parts["states"], NamedSharding(mesh, P()))
  return _three_steps(jax.jit(_both(parts["step"])), states, images)


def _shard_map(parts, check_vma):
  mesh = jax.make_mesh((8,), (AXIS,))  # Explicit axes, JAX's default.
  fn = jax.jit(jax.shard_map(_both(parts["axis_step"]), mesh=mesh, in_specs=(P(), P(AXIS), P()),
                             out_specs=(P(), P()), check_vma=check_vma))
  images = jax.device_put(parts["images"], NamedSharding(mesh, P(AXIS)))
  return _three_steps(fn, parts["axis_states"], images)


def _pmap(parts):
  stacked = jax.tree.map(lambda x: np.stack([x] * 8), parts["axis_states"])
  fn = jax.pmap(_both(parts["axis_step"]), axis_name=AXIS, in_axes=(0, 0, None))
  out = _three_steps(fn, stacked, parts["images"].reshape(8, 2, 16, 16, 3))
  return jax.tree.map(lambda x: x[0], out)


STYLES = {
    "jit_auto_axes": lambda parts: _jit_sharded(parts, AxisType.Auto),
    "jit_explicit_axes": lambda parts: _jit_sharded(parts, AxisType.Explicit),
    "shard_map_check_vma": lambda parts: _shard_map(parts, True),
    "shard_map_no_check_vma": lambda parts: _shard_map(parts, False),
    "pmap": _pmap,
}


def _leaves(state):
  flat = jax.tree_util.tree_flatten_with_path((state.params, state.batch_stats))[0]
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def _diffs(a, b):
  """Per leaf, |a - b| over params and BatchNorm statistics."""
  flat = jax.tree_util.tree_flatten_with_path((a.params, a.batch_stats))[0]
  return {jax.tree_util.keystr(path): np.abs(np.asarray(x) - np.asarray(y))
          for (path, x), y in zip(flat, jax.tree.leaves((b.params, b.batch_stats)), strict=True)}


@pytest.mark.parametrize("style", list(STYLES))
def test_step_equals_one_device_under(style, parts):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
  ref_first, ref_last, ref_metrics = parts["reference"]
  first, last, metrics = STYLES[style](parts)
  for name in ("sgd", "adam"):
    np.testing.assert_allclose(metrics[name]["loss"], ref_metrics[name]["loss"], rtol=0,
                               atol=1e-6, err_msg=name)
    worst = {path: float(d.max()) for path, d in _diffs(last[name], ref_last[name]).items()}
    assert max(worst.values()) <= 1e-6, (style, name, sorted(worst.items(), key=lambda x: -x[1]))
    # The steps did move the state, BatchNorm's running means included: this
    # is not equality of untouched values.
    moved = _diffs(last[name], parts["states"][name])
    assert max(float(d.max()) for d in moved.values()) > 1e-3
    assert min(float(d.max()) for p, d in moved.items() if "mean" in p) > 1e-3

  # Adam's default eps: after one step, differences only where the gradient
  # is noise (the first step's gradient is Adam's mu / (1 - b1)); after three,
  # within the step bound.
  name = DEFAULT_EPS
  if name not in last:
    return
  mu = jax.tree_util.tree_flatten_with_path(ref_first[name].opt_state[0].mu)[0]
  gradient = {"[0]" + jax.tree_util.keystr(p): np.abs(np.asarray(m)) / 0.1 for p, m in mu}
  for path, d in _diffs(first[name], ref_first[name]).items():
    assert d.max() <= 2 * LR, (style, path, d.max())
    if path in gradient:  # Params; the BatchNorm means follow their biases.
      assert np.all(gradient[path][d > 1e-6] < _NOISE), (style, path)
  for path, d in _diffs(last[name], ref_last[name]).items():
    assert d.max() <= _ADAM_STEP_BOUND, (style, path, d.max())


def test_readme_example_runs_as_written():
  text = README.read_text()
  section = text.split("## Library use", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  assert blocks, "README.md's Library use section has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
  assert namespace["losses_seen"][-1] < namespace["losses_seen"][0]
