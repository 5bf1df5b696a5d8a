"""Metric and result files: JSON lines, TensorBoard, atomic JSON and npz."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from absl import logging


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """A temporary file beside ``path`` that replaces it when the block ends without error.

  Readers see the old file or the new one, never a torn one.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
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


class MetricWriter:
  """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl`` and to TensorBoard.

  With ``active=False`` (processes other than 0 of a multi-process job) it
  writes nothing.
  """

  def __init__(self, workdir: str | os.PathLike, *, active: bool = True):
    self._file = self._tb = None
    if not active:
      return
    self._file = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.fspath(Path(workdir) / "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX is not installed; writing metrics.jsonl only.")
      self._tb = None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._file is None:
      return
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
                     + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
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
