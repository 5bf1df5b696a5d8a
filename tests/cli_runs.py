"""Running the command line in a subprocess, as a user would: runs, interrupts, resumes.

Shared by the tests that stop and resume real runs (``test_reliability``,
``test_replicas``). ``fault`` names a fault of ``tests/fault_runner.py``.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from jax_dae import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def env(fault=None):
  """The environment of a run on the CPU (with ``fault`` armed)."""
  variables = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))
  if fault:
    variables["JAX_DAE_FAULT"] = fault
  return variables


def cmd(args, fault=None):
  """``python -m jax_dae.main ARGS`` (through the fault runner when ``fault``)."""
  if fault:
    return [sys.executable, str(ROOT / "tests" / "fault_runner.py"), *args]
  return [sys.executable, "-m", "jax_dae.main", *args]


def run(args, fault=None):
  """Runs the command to its end; the ``CompletedProcess``."""
  return subprocess.run(cmd(args, fault), cwd=ROOT, env=env(fault), capture_output=True,
                        text=True, timeout=600)


def resumed_from(log: str) -> int:
  """The step a run's log says it resumed from."""
  match = re.search(r"Resuming from step (\d+)", log)
  assert match, log[-3000:]
  return int(match.group(1))


def interrupt_after_first_progress(args, workdir, fault=None, delay_s=0.0):
  """Starts the command, sends SIGINT ``delay_s`` after its first progress line with a rate.

  Asserts that it exited as SIGINT asks, without a traceback, naming the step
  it saved. Returns (seconds from the signal to the exit, everything it
  printed, the newest checkpoint's step).
  """
  proc = subprocess.Popen(cmd(args, fault), cwd=ROOT, env=env(fault), stderr=subprocess.PIPE,
                          text=True)
  # tqdm's line after a call: "8/1536 [00:01<03:10, 7.9img/s" (or "s/img" when slow).
  seen = ""
  while not re.search(r"[1-9]\d*/\d+ \[[^]]*\d(img/s|s/img)", seen):
    chunk = proc.stderr.read(1)
    assert chunk, f"exited before any progress: {seen[-3000:]}"
    seen += chunk
  time.sleep(delay_s)
  proc.send_signal(signal.SIGINT)
  sent = time.time()
  _, rest = proc.communicate(timeout=120)
  stopped_in, log = time.time() - sent, seen + rest
  assert proc.returncode == 128 + signal.SIGINT, log[-3000:]
  assert "Traceback" not in log
  saved = checkpoint.Checkpointer(workdir / "checkpoints").latest_step()
  assert f"stopped by SIGINT at step {saved}" in log
  return stopped_in, log, saved
