"""Checkpoints of the train state with Orbax: the newest few and the best.

Layout under a run's ``checkpoints/`` folder::

    latest/<step>/   the newest ``max_to_keep`` states, one per epoch (resume)
    best/<step>/     the state with the highest validation metric (inference)

In one process, ``save`` returns at once: the state is copied on its devices
(the train loop donates the original's buffers) and handed to a background
thread, which runs Orbax's saves in order while training goes on. Across
processes Orbax synchronises them with device computations, so there the
saves start on the calling thread, in the train loop's order. Orbax writes
each checkpoint to a temporary folder and renames it when complete, so an
interrupted save is never listed as a checkpoint. A listed
checkpoint that cannot be read (damaged on disk) is skipped, with a warning
naming it, for the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jax_dae import writers


def _manager(directory: Path, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.fspath(directory.absolute()),
      options=ocp.CheckpointManagerOptions(create=True, **options),
  )


def _abstract(state: Any) -> Any:
  """Restore targets: each leaf's shape, dtype and sharding.

  Leaves without a sharding (Python numbers, ``jax.eval_shape`` outputs) go to
  this process's first device, so a checkpoint written on another topology
  (8 GPUs, 2 processes) restores here all the same.
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    x = x if hasattr(x, "shape") else np.asarray(x)  # a Python step counter
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=getattr(x, "sharding", None) or default)

  return jax.tree.map(leaf, state)


class Checkpointer:
  """Saves a train state every epoch and keeps the best by a validation metric.

  Args:
    directory: the run's checkpoint folder.
    max_to_keep: newest checkpoints kept for resuming.
    best_metric: key of the metrics passed to ``save`` that ranks checkpoints
      (higher is better).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               best_metric: str = "psnr"):
    if max_to_keep < 1:
      raise ValueError(f"config.train.max_checkpoints must be >= 1, got {max_to_keep}.")
    directory = Path(directory)
    self._best_metric = best_metric
    self._latest = _manager(directory / "latest", max_to_keep=max_to_keep)
    self._best = _manager(directory / "best", max_to_keep=1, best_fn=lambda m: m[best_metric],
                          best_mode="max")
    steps = self._best.all_steps()
    metrics = self._best.metrics(steps[-1]) if steps else None
    self._best_value = metrics[best_metric] if metrics else -float("inf")
    self._best_step = steps[-1] if steps else None
    self._writer = writers.Background("checkpoint")
    # Several processes: saves run on the calling thread, one manager at a time.
    self._multiprocess = jax.process_count() > 1

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    """The step of the best checkpoint (counting saves still being written)."""
    return self._best_step

  def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> None:
    """Saves ``state`` at ``step``; also as the best if ``metrics`` beat the best so far.

    Saves run in the background; ``wait`` blocks until they are on disk.
    """
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    value = metrics.get(self._best_metric)
    is_best = value is not None and value > self._best_value
    if is_best:
      self._best_value = value
      self._best_step = step
    if self._multiprocess:
      # Orbax synchronises processes with device computations, which must run
      # in the same order as the train loop's in every process: this thread.
      self._write(step, state, metrics, is_best)
      return
    # Fresh buffers: the caller may donate ``state``'s to its next step.
    copy = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
    self._writer.submit(self._write, step, copy, metrics, is_best)

  def _write(self, step: int, state: Any, metrics: dict[str, float], is_best: bool) -> None:
    # Across processes the two managers' background saves must not overlap:
    # they synchronise on barriers of the same names. One process has no
    # barriers, and both saves write at once.
    if self._multiprocess:
      self._best.wait_until_finished()
    self._latest.save(step, args=ocp.args.StandardSave(state), metrics=metrics or None)
    if is_best:
      if self._multiprocess:
        self._latest.wait_until_finished()
      self._best.save(step, args=ocp.args.StandardSave(state), metrics=metrics)

  def _restore_newest(self, manager: ocp.CheckpointManager, state: Any) -> Any | None:
    self.wait()  # Our own saves first.
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
      except Exception as e:  # A damaged checkpoint raises many kinds of errors.
        logging.warning("Checkpoint %s/%d is damaged and was skipped: %s",
                        manager.directory, step, str(e).splitlines()[0] if str(e) else e)
        continue
      logging.info("Restored checkpoint %s/%d.", manager.directory, step)
      return restored
    return None

  def restore_latest(self, state: Any) -> Any:
    """The newest readable checkpoint in ``state``'s structure and shardings.

    Returns ``state`` unchanged when there is none.
    """
    restored = self._restore_newest(self._latest, state)
    return state if restored is None else restored

  def restore_best(self, state: Any) -> Any:
    """The best checkpoint, else the newest; ``state`` unchanged when there is none."""
    restored = self._restore_newest(self._best, state)
    return self.restore_latest(state) if restored is None else restored

  def wait(self) -> None:
    """Blocks until pending saves are on disk; raises a failed save's error."""
    self._writer.wait()
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    try:
      self._writer.close()
    finally:
      self._latest.close()
      self._best.close()
