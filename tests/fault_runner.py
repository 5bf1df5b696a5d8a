"""Runs `python -m jax_dae.main` with a fault injected at a chosen point.

Used by tests/test_reliability.py. `JAX_DAE_FAULT` says what and where:
  "save:N"  before the N-th checkpoint save, waits until the earlier saves are
            on disk; starts the N-th and is killed with SIGKILL while it is
            being written (a checkpoint on disk, a later one in flight)
  "nan:K"   the training loss becomes NaN from step K on (parameters stay finite)
  "enospc:N" the N-th write of a checkpoint (Orbax's save) fails as on a full disk
  "slow:K"  every train step also runs K products of 1000x1000 matrices inside the
            compiled call (about 6 ms each on 2 cores), as one step of a large model
            takes seconds on a CPU; the result is added to the loss metric times 0,
            so parameters are as without the fault
"""

import errno
import os
import signal
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import app

from jax_dae import checkpoint, main, steps

where, count = os.environ["JAX_DAE_FAULT"].split(":")
count = int(count)

if where == "save":
  calls = {"n": 0}
  original_save = checkpoint.Checkpointer.save

  def save_then_die(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == count:
      self.wait()
      original_save(self, *args, **kwargs)
      os.kill(os.getpid(), signal.SIGKILL)
    return original_save(self, *args, **kwargs)

  checkpoint.Checkpointer.save = save_then_die
elif where == "nan":
  original_factory = steps.make_train_step

  def nan_from_step(**kwargs):
    step_fn = original_factory(**kwargs)

    def train_step(state, images, rng):
      new_state, metrics = step_fn(state, images, rng)
      bad = state.step + 1 >= count
      return new_state, metrics | {"loss": jnp.where(bad, jnp.nan, metrics["loss"])}

    return train_step

  steps.make_train_step = nan_from_step
elif where == "slow":
  original_factory = steps.make_train_step

  def slow_steps(**kwargs):
    step_fn = original_factory(**kwargs)

    def busy(x):
      return jnp.sum(jax.lax.fori_loop(0, count, lambda _, y: jnp.tanh(y @ y), x))

    def train_step(state, images, rng):
      new_state, metrics = step_fn(state, images, rng)
      # (A host callback that sleeps would make XLA:CPU run the call synchronously.)
      x = jnp.full((1000, 1000), 1e-3, jnp.float32) + metrics["loss"] * 0
      return new_state, metrics | {"loss": metrics["loss"] + 0.0 * busy(x)}

    return train_step

  steps.make_train_step = slow_steps
elif where == "enospc":
  writes = {"n": 0}
  original_write = ocp.CheckpointManager.save

  def write_or_fail(self, *args, **kwargs):
    writes["n"] += 1
    if writes["n"] >= count:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original_write(self, *args, **kwargs)

  ocp.CheckpointManager.save = write_or_fail
else:
  sys.exit(f"unknown fault {where!r}")

if __name__ == "__main__":
  sys.argv[0] = "jax_dae.main"
  app.run(main.main)
