"""One run per workdir: an advisory lock on ``<workdir>/.lock``.

Two runs writing the same workdir interleave their checkpoints and metrics,
and one's clean-up of the other's half-written files destroys them; the
second run must stop before it writes anything. ``hold`` takes an exclusive
``fcntl.flock`` on ``<workdir>/.lock`` and writes the holder's pid, host and
start time into it, so that a refused run can say who is in the way. The
kernel drops a ``flock`` when its process ends, however it ends (exception,
SIGKILL, crash), so a stale lock never blocks a later run; the file itself
stays, as a record of the last holder.

flock works between processes of one host, and on network file systems that
forward it (NFS v4, Lustre, GPFS mounted with locking); where it does not,
the lock protects nothing but costs nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"

# Workdirs locked by this process (resolved paths). flock conflicts between
# two open files even in one process, so code that wants to know whether
# "someone else" holds a workdir asks here first.
_held: set[Path] = set()


class BusyError(RuntimeError):
  """Another process holds the workdir; the message names it and the way out."""


def _key(workdir: str | os.PathLike) -> Path:
  return Path(workdir).resolve()


def held_here(workdir: str | os.PathLike) -> bool:
  """Whether this process holds ``workdir``'s lock (through ``hold``)."""
  return _key(workdir) in _held


def _describe_holder(path: Path) -> str:
  try:
    info = json.loads(path.read_text())
    started = datetime.datetime.fromisoformat(info["started"]).strftime("%Y-%m-%d %H:%M")
    return f"pid {info['pid']} on host {info['host']} (started {started})"
  except (OSError, ValueError, KeyError, TypeError):
    # The holder has the lock but has not written its details yet.
    return "another process"


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds ``workdir`` for this process until the block ends.

  Args:
    workdir: the run's output folder; created if missing.

  Raises:
    BusyError: another process holds it. The message is one line, e.g.
      ``workdir runs/x is in use by pid 1234 on host h (started 2026-12-05
      10:31); wait for it or use another --workdir``.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  key = _key(workdir)
  if key in _held:
    raise BusyError(f"workdir {workdir} is already in use by this process (pid {os.getpid()}); "
                    "use another --workdir")
  path = workdir / LOCK_NAME
  # Not O_TRUNC: the holder's details must survive our failed attempt.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise BusyError(f"workdir {workdir} is in use by {_describe_holder(path)}; wait for it "
                      "or use another --workdir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held.add(key)
    try:
      yield
    finally:
      _held.discard(key)
      # The file is left in place: deleting it would let a process that has
      # it open lock a file no longer in the folder, beside a new one.
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
