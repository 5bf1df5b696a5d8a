"""Clean stops: SIGINT (Ctrl-C) and SIGTERM end a run at the next call boundary.

Before training starts (data loading, compiling) there is nothing to save,
and a signal stops at once with ``Interrupted(step=None)``. Once the trainer
arms the request, a signal is recorded instead: the running compiled call
finishes (calls are sized to take about a second), the trainer saves a
checkpoint of that step and raises ``Interrupted(step=N)``, and the command
line exits with ``128 + signal``. A call that is still running a few seconds
after the signal (one step can take longer than that on a CPU) is abandoned:
the state before it is saved instead (``wait_ready``), and the command line
exits without waiting for the abandoned work. A second signal stops at once,
losing only the work since the last checkpoint.

``Interrupted`` is a ``KeyboardInterrupt``, so ``except Exception`` blocks do
not swallow it. Outside ``handle_signals`` (or off the main thread, where
Python cannot install handlers) signals keep their usual behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """A run stopped on a signal; ``step`` is the step whose checkpoint was saved, if any."""

  def __init__(self, signum: int, step: int | None = None, *, abandoned: bool = False):
    self.signum = signum
    self.step = step
    self.abandoned = abandoned  # device work is still running: exit without waiting for it
    name = signal.Signals(signum).name
    if step is None:
      message = f"stopped by {name} before any new training step; nothing was lost"
    else:
      message = (f"stopped by {name} at step {step}; its checkpoint is saved: rerun the same "
                 "command to resume from it")
    super().__init__(message)


class StopRequest:
  """Whether a stop signal has arrived (``bool(request)``) and which one."""

  def __init__(self):
    self.signum: int | None = None
    self.armed = False

  def arm(self) -> None:
    """From now on a signal is recorded for the trainer instead of stopping at once."""
    self.armed = True

  def __bool__(self) -> bool:
    return self.signum is not None

  def check(self, step: int, *, abandoned: bool = False) -> None:
    """Raises ``Interrupted`` if a stop was requested (after the caller saved ``step``)."""
    if self.signum is not None:
      raise Interrupted(self.signum, step, abandoned=abandoned)


@contextlib.contextmanager
def handle_signals() -> Iterator[StopRequest]:
  """Within the block, SIGINT and SIGTERM stop at once until the yielded request is armed.

  Armed, the first signal sets the request; a second one stops at once.
  """
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def on_signal(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if not request.armed or request.signum is not None:
      raise Interrupted(signum)
    request.signum = signum
    # Said at once (os.write is safe in a handler), though the stop waits for the
    # running call to finish.
    os.write(2, f"\n{name}: stopping after the current call and saving a checkpoint "
                "(send it again to stop at once)\n".encode())

  previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def wait_ready(tree: Any, stop: StopRequest, *, patience: float) -> bool:
  """Waits until ``tree``'s arrays are computed; False if a stop came and ``patience`` ran out.

  The wait happens on a daemon thread while this (the main) thread stays free
  to run signal handlers, which it cannot do while blocked inside XLA.
  """
  done = threading.Event()

  def wait():
    try:
      jax.block_until_ready(tree)
    finally:
      done.set()

  threading.Thread(target=wait, name="wait_ready", daemon=True).start()
  stop_seen = None
  while not done.wait(0.2):
    if stop and stop_seen is None:
      stop_seen = time.monotonic()
    if stop_seen is not None and time.monotonic() - stop_seen > patience:
      return False
  return True
