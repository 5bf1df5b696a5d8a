"""Metric and result files: JSON lines, TensorBoard, atomic JSON and npz."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from absl import logging


def _read_umask() -> int:
  """The process's umask, read without changing it where the system allows."""
  try:
    with open("/proc/self/status") as f:  # Linux 4.7+
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  # os.umask can only read by setting: set and restore it, once, at import,
  # before any writer thread could create a file under the temporary value.
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# New files get 0o666 & ~umask, like open(); mkstemp creates them 0o600.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """A temporary file beside ``path`` that replaces it when the block ends without error.

  Readers see the old file or the new one, never a torn one. The file gets
  the permissions ``open()`` would give a new file (0o666 less the umask).
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fchmod(f.fileno(), _FILE_MODE)
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON atomically."""
  with atomic_file(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Writes an ``.npz`` of ``arrays`` atomically."""
  with atomic_file(path, "wb") as f:
    np.savez(f, **arrays)


class Background:
  """Runs jobs in submission order on one worker thread, off the training loop's path.

  For host-side output (PNG encoding, TensorBoard, figures) that the loop
  need not wait for. A job's exception is raised by the next ``submit``,
  ``wait`` or ``close``, so no error is lost; ``close`` waits for every job.
  """

  def __init__(self, name: str = "background"):
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    self._pending: list[concurrent.futures.Future] = []

  def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    self._collect(block=False)
    self._pending.append(self._pool.submit(fn, *args, **kwargs))

  def wait(self) -> None:
    """Blocks until every submitted job has finished; raises the first failure."""
    self._collect(block=True)

  def _collect(self, *, block: bool) -> None:
    pending, self._pending = self._pending, []
    for future in pending:
      if block or future.done():
        future.result()  # Re-raises the job's exception.
      else:
        self._pending.append(future)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._pool.shutdown(wait=True)


class MetricWriter:
  """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl`` and to TensorBoard.

  ``metrics.jsonl`` is written and flushed at once; TensorBoard (whose import
  alone takes about two seconds) is opened and written on a ``Background``
  thread, in order, and complete after ``close``. With ``active=False``
  (processes other than 0 of a multi-process job) it writes nothing.
  """

  def __init__(self, workdir: str | os.PathLike, *, active: bool = True):
    self._file = self._tb = self._background = None
    if not active:
      return
    self._file = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115
    self._background = Background("tensorboard")
    self._background.submit(self._open_tensorboard, Path(workdir) / "tensorboard")

  def _open_tensorboard(self, directory: Path) -> None:
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      logging.warning("tensorboardX is not installed; writing metrics.jsonl only.")
      return
    self._tb = SummaryWriter(os.fspath(directory))

  def _add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._file.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._file.flush()
    self._background.submit(self._add_scalars, int(step), scalars)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._background is not None:
      self._background.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict]:
  """Reads metrics.jsonl, skipping a torn last line left by a killed run.

  ``missing_ok``: a missing file reads as no rows.
  """
  if missing_ok and not Path(path).exists():
    return []
  rows = []
  for line in Path(path).read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows
