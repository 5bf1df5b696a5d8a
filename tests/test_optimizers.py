"""create_optimizer against NumPy implementations of the published update rules (issue 25).

Each optimizer is built from ``configs.default`` with overrides, run for three
steps on a small parameter tree with fixed gradients (in float64 under
``jax.enable_x64``, and in float32 as training runs), and each update compared
with the rules written out here in float64:

* adam: L2 added to the gradient (PyTorch ``Adam(weight_decay=...)``), then
  Adam with bias correction (Kingma & Ba, 2015) and ``eps`` outside the
  square root, as optax and PyTorch place it.
* adamw: Adam on the raw gradient plus the decoupled decay
  ``weight_decay * param`` (Loshchilov & Hutter, 2019), both times the
  learning rate.
* sgd: L2 added to the gradient, heavy-ball momentum
  ``buf = momentum * buf + grad`` (PyTorch ``SGD``), step ``-lr * buf``.

With ``decay_rate < 1`` the learning rate of update ``t`` (counting from 0) is
``learning_rate * decay_rate ** (t / decay_steps)``, smoothly (not staircase).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_dae
from configs import default

B1, B2, EPS = 0.9, 0.999, 1e-8  # Adam's published defaults.
# float64 (under x64): the rule itself (optax's schedule still rounds the
# learning rate to float32, 3e-8). float32, as training runs: Adam's bias
# correction 1 - b2**t cancels, so float32's rounding of b2 = 0.999 and of
# b2**t (~6e-8) is a relative error of up to ~3e-5 in v_hat at small t, half of
# that in the update; 1e-6 holds only in float64.
RTOL = {np.float64: 1e-6, np.float32: 3e-5}

# Parameters and per-step gradients. The tiny gradients on "scale" are of the
# order of EPS, so moving eps inside the square root changes the result.
PARAMS = {
    "conv": {"kernel": np.array([[0.5, -1.25], [2.0, 0.0], [-0.75, 0.3]]),
             "bias": np.array([0.1, -0.2])},
    "scale": np.array([1.5, -3.0]),
}
GRADS = [
    {"conv": {"kernel": np.array([[0.2, -0.1], [0.05, 0.3], [-0.4, 0.0]]),
              "bias": np.array([1.0, -0.5])},
     "scale": np.array([3e-9, -1e-8])},
    {"conv": {"kernel": np.array([[-0.3, 0.2], [0.1, -0.05], [0.25, 0.6]]),
              "bias": np.array([0.2, 0.4])},
     "scale": np.array([-2e-9, 5e-9])},
    {"conv": {"kernel": np.array([[0.05, 0.05], [-0.2, 0.1], [0.0, -0.3]]),
              "bias": np.array([-0.7, 0.1])},
     "scale": np.array([1e-8, 0.0])},
]


def _leaves(tree):
  return [tree["conv"]["kernel"], tree["conv"]["bias"], tree["scale"]]


def _tree(leaves):
  return {"conv": {"kernel": leaves[0], "bias": leaves[1]}, "scale": leaves[2]}


def _lr(opt, t, *, staircase=False):
  """Learning rate of update ``t`` (0-based): exponential decay, smooth by default."""
  exponent = t // opt["decay_steps"] if staircase else t / opt["decay_steps"]
  return opt["learning_rate"] * opt["decay_rate"] ** exponent


def _reference_updates(opt, params_before, *, eps=EPS, eps_root=0.0, staircase=False):
  """Update ``t`` for the parameters ``params_before[t]``, by the published rules in float64.

  The parameters enter only through weight decay; taking them from the run
  under test keeps the comparison of each update exact to float32 rounding.
  """
  m = [np.zeros_like(p, np.float64) for p in _leaves(PARAMS)]
  v = [np.zeros_like(p, np.float64) for p in _leaves(PARAMS)]
  updates = []
  for t, before in enumerate(params_before):
    lr = _lr(opt, t, staircase=staircase)
    update = []
    for i, (p, g) in enumerate(zip(_leaves(before), _leaves(GRADS[t]), strict=True)):
      p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
      if opt["name"] in ("adam", "sgd"):
        g = g + opt["weight_decay"] * p  # Coupled L2: part of the gradient.
      if opt["name"] == "sgd":
        m[i] = opt["momentum"] * m[i] + g
        update.append(-lr * m[i])
        continue
      m[i] = B1 * m[i] + (1 - B1) * g
      v[i] = B2 * v[i] + (1 - B2) * g * g
      m_hat = m[i] / (1 - B1 ** (t + 1))
      v_hat = v[i] / (1 - B2 ** (t + 1))
      step = m_hat / (np.sqrt(v_hat + eps_root) + eps)
      if opt["name"] == "adamw":
        step = step + opt["weight_decay"] * p  # Decoupled, and scaled by lr too.
      update.append(-lr * step)
    updates.append(_tree(update))
  return updates


def _library(opt, steps, dtype):
  """``(params before each update, the updates)`` of ``jax_dae.create_optimizer``."""
  config = default.get_config()
  config.optimizer.update(opt)
  # float64 needs x64 for the whole run: optax's counts, bias corrections and
  # schedule then compute in float64 too.
  with jax.enable_x64(dtype == np.float64):
    tx = jax_dae.create_optimizer(config)
    params = _tree([jnp.asarray(p, dtype) for p in _leaves(PARAMS)])
    opt_state = tx.init(params)
    before, updates = [], []
    for t in range(steps):
      grads = _tree([jnp.asarray(g, dtype) for g in _leaves(GRADS[t])])
      update, opt_state = tx.update(grads, opt_state, params)
      assert all(u.dtype == dtype for u in _leaves(update))
      before.append(jax.tree.map(np.asarray, params))
      updates.append(jax.tree.map(np.asarray, update))
      params = optax.apply_updates(params, update)
  return before, updates


CASES = {
    "adam_l2": dict(name="adam", learning_rate=1e-2, weight_decay=0.1),
    "adam_no_decay": dict(name="adam", learning_rate=3e-3, weight_decay=0.0),
    "adamw": dict(name="adamw", learning_rate=1e-2, weight_decay=0.1),
    "sgd_momentum_l2": dict(name="sgd", learning_rate=0.05, weight_decay=0.1, momentum=0.9),
    "sgd_plain": dict(name="sgd", learning_rate=0.05, weight_decay=0.0, momentum=0.0),
}
# Halves every 2 steps: updates 0, 1, 2 use lr * (1, 0.707, 0.5); a staircase
# schedule would use (1, 1, 0.5).
DECAY = dict(decay_rate=0.5, decay_steps=2)


def _opt(case, decay=False, **overrides):
  opt = {"momentum": 0.0, "decay_rate": 1.0, "decay_steps": 1000, **CASES[case]}
  if decay:
    opt.update(DECAY)
  opt.update(overrides)
  return opt


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("decay", [False, True], ids=["constant_lr", "exponential_decay"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_equals_published_update_rule(case, decay, dtype):
  opt = _opt(case, decay)
  before, got = _library(opt, steps=3, dtype=dtype)
  want = _reference_updates(opt, before)
  for t in range(3):
    for g, w in zip(_leaves(got[t]), _leaves(want[t]), strict=True):
      # Relative to the leaf's largest update: where the decay term cancels
      # the Adam term an update is small and its float32 error is not.
      np.testing.assert_allclose(g, w, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(w).max(),
                                 err_msg=f"{case} update {t}")


def _difference(a, b):
  """Largest difference of two update sequences, relative to the largest update."""
  diffs = [np.max(np.abs(x - y)) for s, t in zip(a, b, strict=True)
           for x, y in zip(_leaves(s), _leaves(t), strict=True)]
  scale = max(np.max(np.abs(y)) for t in b for y in _leaves(t))
  return max(diffs) / scale


def test_the_rules_compared_are_far_apart():
  # The comparisons above are only as strong as these differences are large
  # against RTOL[np.float32]: a library that mixed up the variants could not pass them.
  before, _ = _library(_opt("adam_l2"), steps=3, dtype=np.float64)
  adam = _reference_updates(_opt("adam_l2"), before)
  assert _difference(adam, _reference_updates(_opt("adamw"), before)) > 1e-2  # Coupled or not.
  # eps inside the square root: the leaf with gradients near eps moves differently.
  adamw = _reference_updates(_opt("adamw"), before)
  inside = _reference_updates(_opt("adamw"), before, eps=0.0, eps_root=EPS)
  assert abs(inside[0]["scale"][0] / adamw[0]["scale"][0] - 1) > 0.1
  sgd = _reference_updates(_opt("sgd_momentum_l2"), before)
  assert _difference(sgd, _reference_updates(_opt("sgd_momentum_l2", momentum=0.0), before)) > 0.1
  smooth = _reference_updates(_opt("sgd_plain", decay=True), before)
  staircase = _reference_updates(_opt("sgd_plain", decay=True), before, staircase=True)
  assert abs(smooth[1]["conv"]["bias"][0] / staircase[1]["conv"]["bias"][0] - 2 ** -0.5) < 1e-12


@pytest.mark.parametrize("field, value, message", [
    ("name", "rmsprop", "allowed: adam, adamw, sgd"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
    ("decay_rate", 1.5, r"decay_rate must be in \(0, 1\]"),
])
def test_bad_optimizer_config_names_the_field(field, value, message):
  config = default.get_config()
  config.optimizer[field] = value
  with pytest.raises(ValueError, match=message):
    jax_dae.create_optimizer(config)
