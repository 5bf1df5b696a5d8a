"""Checkpoints of the train state with Orbax: save every epoch, resume by default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Keeps the newest ``max_to_keep`` checkpoints of a train state in ``directory``.

  Orbax writes each checkpoint to a temporary folder and renames it when
  complete, so an interrupted save is never mistaken for a checkpoint.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    self._manager = ocp.CheckpointManager(
        os.fspath(os.path.abspath(directory)),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving ``state`` at ``step`` (asynchronously; see ``wait``)."""
    self._manager.save(step, args=ocp.args.StandardSave(state),
                       metrics=dict(metrics) if metrics else None)

  def restore_latest(self, state: Any) -> Any:
    """The newest checkpoint restored into ``state``'s structure and shardings.

    Returns ``state`` unchanged when there is no checkpoint.
    """
    step = self._manager.latest_step()
    if step is None:
      return state
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    logging.info("Restoring checkpoint at step %d.", step)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
