"""Runs `python -m jax_dae.main` and kills itself with SIGKILL at a chosen point.

Used by tests/test_reliability.py. `JAX_DAE_FAULT` says where:
  "write:N"  after the N-th metrics write (mid-epoch, between compiled calls)
  "save:N"   right after the N-th checkpoint save has started (mid-write)
"""

import os
import signal
import sys

from absl import app

from jax_dae import checkpoint, main, writers

where, count = os.environ["JAX_DAE_FAULT"].split(":")
calls = {"n": 0}


def _die_after(original):
  def wrapper(*args, **kwargs):
    result = original(*args, **kwargs)
    calls["n"] += 1
    if calls["n"] == int(count):
      os.kill(os.getpid(), signal.SIGKILL)
    return result

  return wrapper


if where == "write":
  writers.MetricWriter.write_scalars = _die_after(writers.MetricWriter.write_scalars)
elif where == "save":
  checkpoint.Checkpointer.save = _die_after(checkpoint.Checkpointer.save)
else:
  sys.exit(f"unknown fault {where!r}")

if __name__ == "__main__":
  sys.argv[0] = "jax_dae.main"
  app.run(main.main)
