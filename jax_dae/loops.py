"""Compiled training loops and the feeds that give them data.

The fast path keeps the training split on the accelerators as uint8 and runs
many steps per compiled call: each step takes its batch by a permuted index,
corrupts it, runs forward and backward and the Optax update; the host sees
one small array of losses per call. Calls are sized by time (``CallSizer``),
so progress, stop signals and checkpoints are seconds apart on any backend.
When the split does not fit on the devices, ``HostFeed`` streams batches
from the host instead (``jax_dae.data.pipeline``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_dae import distributed
from jax_dae import replicas as replicas_lib
from jax_dae.data import pipeline


def largest_divisor_at_most(n: int, limit: int) -> int:
  """Largest divisor of ``n`` that is <= ``limit`` (at least 1)."""
  return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def make_train_loop(train_step: Callable, *, batch_size: int, steps_per_epoch: int,
                    steps_per_call: int, batch_sharding: NamedSharding | None = None,
                    replicas: replicas_lib.Replicas = replicas_lib.SINGLE) -> Callable:
  """``loop(state, images, perm, step_key[, num_steps]) -> (state, metrics [steps_per_call])``.

  Runs up to ``steps_per_call`` train steps in one compiled call; step ``s``
  uses the batch ``perm[(s mod steps_per_epoch) * batch_size :][:batch_size]``
  of the device-resident ``images`` and the key ``fold_in(step_key, s)``.

  Without ``num_steps`` the call is a ``lax.scan`` of exactly
  ``steps_per_call`` steps. With ``num_steps`` (an int32 scalar, traced: one
  compile serves every count) it runs the first ``num_steps`` of them in a
  ``lax.while_loop``, and metric rows past ``num_steps`` are zero; the trainer
  sizes its calls by time this way. Either form computes each step the same
  way, so how a run is cut into calls does not change its result.

  With ``replicas`` of more than one seed (``jax_dae.replicas``), ``state``,
  ``perm`` ``[N, num_examples]`` and ``step_key`` ``[N]`` carry a leading
  replica axis, the images are shared, every step runs all replicas at once
  (``jax.vmap``), and metrics are ``[steps_per_call, N]``.
  """

  def step_at(state, images, perm, step_key):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    batch = jnp.take(images, idx, axis=0)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, jax.random.fold_in(step_key, state.step))

  step_at = replicas.map(step_at, in_axes=(0, None, 0, 0))  # itself for one replica

  def loop(state, images, perm, step_key, num_steps=None):
    if num_steps is None:
      return jax.lax.scan(lambda state, _: step_at(state, images, perm, step_key), state, None,
                          length=steps_per_call)
    row = jax.eval_shape(step_at, state, images, perm, step_key)[1]
    rows = jax.tree.map(lambda x: jnp.zeros((steps_per_call, *x.shape), x.dtype), row)

    def body(i, carry):
      state, rows = carry
      state, metrics = step_at(state, images, perm, step_key)
      return state, jax.tree.map(lambda r, m: r.at[i].set(m), rows, metrics)

    return jax.lax.fori_loop(0, jnp.minimum(num_steps, steps_per_call), body, (state, rows))

  return jax.jit(loop, donate_argnums=0)


class CallSizer:
  """How many steps the next compiled call runs, so that a call takes about ``seconds``.

  The first call runs one step; each later one scales the last call's count by
  how far its time was from the target (at most 4x up at a time), within
  ``[1, maximum]``. Progress, stop requests and time-based checkpoints are
  therefore seconds apart on any backend, however slow a step is.
  """

  def __init__(self, seconds: float, maximum: int):
    self._seconds = seconds
    self._maximum = maximum
    self._next = 1

  def next(self, limit: int) -> int:
    """The next call's step count, at most ``limit`` (the steps left in the epoch)."""
    return max(1, min(self._next, limit))

  def record(self, steps: int, seconds: float) -> None:
    """Updates the count from a call of ``steps`` steps that took ``seconds``."""
    per_step = max(seconds, 1e-6) / steps
    target = int(self._seconds / per_step)
    # Growth is bounded against the planned count, not the run one: a call cut
    # short by the end of an epoch does not restart the ramp.
    self._next = max(1, min(self._maximum, target, 4 * self._next))


def make_streaming_train_loop(train_step: Callable) -> Callable:
  """``loop(state, batches, step_key) -> (state, metrics [K])`` over host-fed batches.

  ``batches`` is ``[K, B, H, W, C]``: K steps' batches stacked by
  ``data.pipeline.host_batches`` (same rows as the device-resident loop draws).
  """

  def loop(state, batches, step_key):
    def body(state, batch):
      return train_step(state, batch, jax.random.fold_in(step_key, state.step))

    return jax.lax.scan(body, state, batches)

  return jax.jit(loop, donate_argnums=0)


class DeviceFeed:
  """Training data resident on the devices; the compiled loop gathers each batch.

  A call runs any number of steps up to ``max_steps`` (one compile), so the
  trainer sizes its calls by time.
  """

  sized_by_time = True

  def __init__(self, train_step, images, data_key, step_key, *, replicated, batch_sharding,
               batch_size, steps_per_epoch, max_steps,
               replicas: replicas_lib.Replicas = replicas_lib.SINGLE):
    self._images = distributed.replicate(images, replicated)
    self._step_key = step_key
    self._loop = make_train_loop(train_step, batch_size=batch_size,
                                 steps_per_epoch=steps_per_epoch, steps_per_call=max_steps,
                                 batch_sharding=batch_sharding, replicas=replicas)
    # Each replica's own order: [N, num_examples] from its data key.
    permutation = replicas.map(functools.partial(pipeline.permutation,
                                                 num_examples=len(images)), in_axes=(0, None))
    self._permutation = jax.jit(functools.partial(permutation, data_key),
                                out_shardings=replicated)
    self._perm = None

  def compile(self, state):
    self._loop = self._loop.lower(state, self._images, self._permutation(0), self._step_key,
                                  np.int32(1)).compile()

  def start_epoch(self, epoch: int) -> None:
    self._perm = self._permutation(epoch)

  def run(self, state, num_steps: int):
    return self._loop(state, self._images, self._perm, self._step_key, np.int32(num_steps))

  def close(self) -> None:
    pass


class HostFeed:
  """Training data streamed from host memory or disk, prefetched to the devices.

  Batches are stacked ``steps_per_call`` at a time ahead of the loop, so every
  call runs that many steps.
  """

  sized_by_time = False

  def __init__(self, train_step, images, data_key, step_key, *, mesh, batch_size,
               steps_per_epoch, steps_per_call, start_step, num_steps, prefetch):
    sharding = NamedSharding(mesh, P(None, distributed.DATA_AXIS))
    self._shape = jax.ShapeDtypeStruct((steps_per_call, batch_size, *images.shape[1:]),
                                       images.dtype, sharding=sharding)
    self._step_key = step_key
    self._loop = make_streaming_train_loop(train_step)
    self._batches = pipeline.host_batches(
        images, data_key=data_key, batch_size=batch_size, sharding=sharding,
        start_step=start_step, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
        steps_per_item=steps_per_call, prefetch=prefetch)

  def compile(self, state):
    self._loop = self._loop.lower(state, self._shape, self._step_key).compile()

  def start_epoch(self, epoch: int) -> None:
    del epoch  # The stream knows the epoch of every step.

  def run(self, state, num_steps: int):
    del num_steps  # Always the stacked count.
    return self._loop(state, next(self._batches), self._step_key)

  def close(self) -> None:
    self._batches.close()
