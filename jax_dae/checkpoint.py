"""Checkpoints of the train state with Orbax: the newest few and the best.

Layout under a run's ``checkpoints/`` folder::

    latest/<step>/   the newest ``max_to_keep`` states, one per epoch (resume)
    best/<step>/     the state with the highest validation metric (inference)

What a ``Checkpointer`` guarantees:

* A save that ``save`` accepted reaches the disk, or its failure is raised.
  In one process ``save`` returns at once: the state is copied on its devices
  (the train loop donates the original's buffers) and written by a
  background thread while training goes on. ``wait``, ``close``, leaving a
  ``with Checkpointer(...)`` block, and the end of the interpreter (an exit
  hook that runs before Python stops its worker threads) all wait for the
  pending saves. Across processes Orbax synchronises the saves with device
  computations, so there they start on the calling thread, in the train
  loop's order.
* A failed write (disk full, permission denied, I/O error) is raised by the
  next ``save``, ``wait`` or ``close`` as one line, ``SaveError``, naming the
  step, the folder, the cause and the step a rerun resumes from. Nothing is
  written after it.
* Orbax writes each checkpoint to a ``<step>.orbax-checkpoint-tmp`` folder
  and renames it when complete, so an interrupted save is never listed.
  Opening a ``Checkpointer`` removes such leftovers, unless another process
  holds the workdir (``jax_dae.workdir_lock``) and may be writing them.
* Restoring compares the checkpoint's stored tree (keys, shapes, dtypes)
  with the run's state first. A different model or optimizer raises
  ``MismatchError`` naming the differing paths; nothing is skipped or
  changed on disk. Only a checkpoint that cannot be read (metadata or array
  data missing or corrupt) is damaged: it is skipped, with one warning line,
  for the previous one.
* ``save(step)`` replaces a checkpoint of the same step (and in ``latest/``
  any newer one), left damaged or by an earlier attempt: the step retrained
  after a damaged checkpoint was skipped is saved again.
* ``best/`` holds one checkpoint. It is written before ``latest/``, so a
  failed save never leaves ``latest/`` ahead of a best it should have
  replaced.
"""

from __future__ import annotations

import contextlib
import errno
import logging as logging_std
import os
import re
import shutil
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jax_dae import workdir_lock, writers

# What a rerun should do about a mismatch; the trainer defines the flag.
MISMATCH_ADVICE = "use a new --workdir, or pass --config.train.restart=True to start over"
# Orbax's suffix of a checkpoint being written (orbax/checkpoint/_src/path).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
_MAX_DIFFERENCES = 3


class MismatchError(ValueError):
  """A checkpoint's tree differs from the run's state (another model or optimizer)."""


class SaveError(OSError):
  """A checkpoint could not be written; ``errno`` is the operating system's code."""

  def __init__(self, message: str, code: int | None = None):
    super().__init__(message)
    self.errno = code


# ---------------------------------------------------------------------------
# Orbax's noise. A damaged checkpoint makes Orbax log hundreds to thousands of
# lines (one per array and retry), and TensorStore's late callbacks into
# Orbax's closed event loop print a traceback each; the user needs one line.
# ---------------------------------------------------------------------------

def _from_orbax(record: logging_std.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" in record.pathname


class _OrbaxNoise(logging_std.Filter):
  """Drops Orbax's records during a restore attempt, and its reports of OS errors.

  A restore attempt runs on one thread, but Orbax logs from its own threads
  too, so the attempt is marked process-wide (``_quiet_depth``). An OS error
  in a save comes back to the caller as one ``SaveError``; Orbax's own
  reports of it (each with a traceback) would bury that line.
  """

  depth = 0

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not _from_orbax(record):
      return True
    if self.depth:
      return False
    if record.exc_info and record.exc_info[1] is not None:
      return _os_error(record.exc_info[1]) is None
    return _os_error_in_text(record.getMessage()) is None


_noise = _OrbaxNoise()


# TensorStore's errors: "NOT_FOUND: ...", "DATA_LOSS: ..." (absl status codes).
_TENSORSTORE_ERROR = re.compile(r"^[A-Z][A-Z_]+: ")


class _AbandonedReads(logging_std.Filter):
  """Drops asyncio's "Task exception was never retrieved" for TensorStore's errors.

  When one array of a checkpoint fails to read or write, Orbax raises that
  error and abandons the other arrays' tasks; asyncio reports each of their
  errors (the same damage or full disk) when the task is collected.
  """

  def filter(self, record: logging_std.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage().startswith("Task exception was never retrieved")
                and error is not None and _TENSORSTORE_ERROR.match(str(error)))


_abandoned = _AbandonedReads()
_previous_unraisablehook = sys.unraisablehook


def _drop_abandoned_orbax_work(unraisable) -> None:
  """Drops the errors of reads and writes Orbax abandoned after raising the first.

  They reach ``sys.unraisablehook`` when TensorStore calls back into Orbax's
  closed event loop, or when Orbax's unfinished coroutines are collected.
  """
  code = getattr(unraisable.object, "cr_code", None)
  if ((unraisable.exc_type is RuntimeError
       and str(unraisable.exc_value) == "Event loop is closed")
      or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
    return
  _previous_unraisablehook(unraisable)


def _install_filters() -> None:
  global _previous_unraisablehook
  absl_logger = logging_std.getLogger("absl")
  if _noise not in absl_logger.filters:
    absl_logger.addFilter(_noise)
  asyncio_logger = logging_std.getLogger("asyncio")
  if _abandoned not in asyncio_logger.filters:
    asyncio_logger.addFilter(_abandoned)
  if sys.unraisablehook is not _drop_abandoned_orbax_work:
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _drop_abandoned_orbax_work


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  _noise.depth += 1
  try:
    yield
  finally:
    _noise.depth -= 1


def _os_error_in_text(text: str) -> int | None:
  # TensorStore reports OS errors as ValueError("... [os_error_code='28']").
  match = re.search(r"os_error_code='?(\d+)", text)
  return int(match.group(1)) if match else None


def _os_error(e: BaseException) -> tuple[int | None, str] | None:
  """The OS error behind ``e`` (its errno and reason), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and not isinstance(e, SaveError):
      return e.errno, e.strerror or str(e)
    code = _os_error_in_text(str(e))
    if code is not None:
      return code, os.strerror(code)
    e = e.__cause__ or e.__context__
  return None


def _first_line(e: BaseException, limit: int = 200) -> str:
  # TensorStore appends its whole spec (kilobytes of JSON) to its errors.
  text = re.split(r" \[tensorstore_spec|\. See full TensorStore details", str(e), maxsplit=1)[0]
  text = text.splitlines()[0] if text else type(e).__name__
  return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------
# Comparing a checkpoint's tree with the run's.
# ---------------------------------------------------------------------------


def _is_empty(node: Any) -> bool:
  # optax's EmptyState() is stored as None; an empty dict as {}.
  return node is None or (isinstance(node, (dict, list, tuple)) and len(node) == 0)


def _describe(node: Any) -> str:
  if _is_empty(node):
    return "nothing"
  if isinstance(node, dict):
    keys = sorted(map(str, node))
    more = ", ..." if len(keys) > 4 else ""
    return "{" + ", ".join(keys[:4]) + more + "}"
  if isinstance(node, (list, tuple)):
    return f"{len(node)} entries"
  return _describe_leaf(node)


def _describe_leaf(leaf: Any) -> str:
  shape, dtype = _shape_dtype(leaf)
  return f"({','.join(map(str, shape))}{',' if len(shape) == 1 else ''}) {dtype.name}"


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  if not hasattr(leaf, "shape"):
    leaf = np.asarray(leaf)  # A Python step counter.
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _compatible(stored: Any, run: Any) -> bool:
  (s_shape, s_dtype), (r_shape, r_dtype) = _shape_dtype(stored), _shape_dtype(run)
  if s_shape != r_shape:
    return False
  # A step counter is saved as a Python int (int64) or a jax int32 array, and
  # restores into either; other dtypes (float32, bfloat16) must agree.
  both_integer = np.issubdtype(s_dtype, np.integer) and np.issubdtype(r_dtype, np.integer)
  return both_integer or s_dtype == r_dtype


def differences(stored: Any, run: Any, path: str = "") -> Iterator[str]:
  """Where a checkpoint's serialized tree and the run's differ, one phrase each.

  Args:
    stored: the checkpoint's metadata tree (nested dicts and lists of
      metadata with ``shape`` and ``dtype``).
    run: the run's state in Orbax's serialized form
      (``ocp.tree.serialize_tree(state, keep_empty_nodes=True)``).
    path: the path of these nodes, for the phrases.

  Yields:
    Phrases such as ``"params/Conv_0/kernel: checkpoint (9,9,3,64) float32,
    run (9,9,3,32) float32"``.
  """
  where = path or "state"
  if _is_empty(stored) and _is_empty(run):
    return
  if isinstance(stored, dict) and isinstance(run, dict):
    # The run's order (a TrainState's: step, params, opt_state), so that the
    # first differences named are the model's rather than its moments'.
    for key in [*run, *(k for k in stored if k not in run)]:
      sub = f"{path}/{key}" if path else str(key)
      if key not in run:
        yield f"{sub}: only in the checkpoint"
      elif key not in stored:
        yield f"{sub}: only in the run"
      else:
        yield from differences(stored[key], run[key], sub)
  elif isinstance(stored, (list, tuple)) and isinstance(run, (list, tuple)):
    if len(stored) != len(run):
      yield f"{where}: checkpoint has {len(stored)} entries, run has {len(run)}"
      return
    for i, (s, r) in enumerate(zip(stored, run, strict=True)):
      yield from differences(s, r, f"{path}/{i}" if path else str(i))
  elif any(isinstance(x, (dict, list, tuple)) or _is_empty(x) for x in (stored, run)):
    yield f"{where}: checkpoint has {_describe(stored)}, run has {_describe(run)}"
  elif not _compatible(stored, run):
    yield f"{where}: checkpoint {_describe_leaf(stored)}, run {_describe_leaf(run)}"


# ---------------------------------------------------------------------------
# The checkpointer.
# ---------------------------------------------------------------------------


def _manager(directory: Path, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.fspath(directory.absolute()),
      # One unnamed item, stated here: Orbax otherwise guesses it from the
      # first step folder it reads, and a damaged one makes it guess wrong.
      item_handlers=ocp.StandardCheckpointHandler(),
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


# Checkpointers with saves that may be pending, flushed at interpreter exit.
_open: weakref.WeakSet[Checkpointer] = weakref.WeakSet()
_exit_hook_registered = False


def _flush_at_exit() -> None:
  for ckpt in list(_open):
    try:
      ckpt.close()
    except Exception as e:  # noqa: BLE001 -- nothing can be raised to anyone at exit.
      logging.error("%s: %s", type(e).__name__, _first_line(e, limit=1000))


def _register_exit_hook() -> None:
  """Flushes pending saves at exit, while the worker threads still run.

  Python stops thread pools in ``threading._shutdown`` (their own hook,
  registered with ``threading._register_atexit``) before it runs ``atexit``
  handlers: by then a background save could not start the threads Orbax
  writes with ("cannot schedule new futures after interpreter shutdown").
  Hooks of ``threading._register_atexit`` run in reverse order of
  registration, so one registered after the thread pools' runs first.
  """
  global _exit_hook_registered
  if _exit_hook_registered:
    return
  register = getattr(threading, "_register_atexit", None)
  try:
    if register is None:
      raise RuntimeError
    register(_flush_at_exit)
  except RuntimeError:  # No such hook (another Python), or already shutting down.
    import atexit
    atexit.register(_flush_at_exit)
  _exit_hook_registered = True


class Checkpointer:
  """Saves a train state every epoch and keeps the best by a validation metric.

  Use it as a context manager (``with Checkpointer(...) as ckpt:``), or call
  ``close``; saves pending at interpreter exit are written all the same.

  Args:
    directory: the run's checkpoint folder (``<workdir>/checkpoints``). Its
      parent is the workdir whose ``workdir_lock`` says whether leftovers of
      interrupted saves may be removed.
    max_to_keep: newest checkpoints kept for resuming.
    best_metric: key of the metrics passed to ``save`` that ranks checkpoints
      (higher is better).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               best_metric: str = "psnr"):
    if max_to_keep < 1:
      raise ValueError(f"config.train.max_checkpoints must be >= 1, got {max_to_keep}.")
    _install_filters()
    self._directory = Path(directory)
    self._best_metric = best_metric
    self._closed = False
    # The first failed save; raised by the next save/wait/close, and by every
    # later save (nothing is written after it).
    self._failure: BaseException | None = None
    self._failure_raised = False
    # Multi-process: the step each manager is writing in the background, to
    # name it when Orbax reports the failure at the next call.
    self._in_flight: dict[str, int] = {}
    self._multiprocess = jax.process_count() > 1
    self._latest = _manager(self._directory / "latest", max_to_keep=max_to_keep)
    self._best = _manager(self._directory / "best", max_to_keep=1,
                          best_fn=lambda m: m[best_metric], best_mode="max",
                          keep_checkpoints_without_metrics=False)
    self._tidy()
    self._read_best()
    self._writer = writers.Background("checkpoint")
    _open.add(self)
    _register_exit_hook()  # After the Background's thread pool registered its own.

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -------------------------------------------------------------------------
  # Opening.

  def _tidy(self) -> None:
    """Removes leftovers of interrupted saves; keeps one entry in ``best/``.

    Only where no other process may be writing: this process holds the
    workdir, or nobody does (then it holds it for the moment of tidying).
    """
    if jax.process_index() != 0:
      return  # Process 0 tidies the shared folder; the others must not race it.
    workdir = self._directory.parent
    if workdir_lock.held_here(workdir):
      self._tidy_unlocked()
      return
    try:
      with workdir_lock.hold(workdir):
        self._tidy_unlocked()
    except workdir_lock.BusyError as e:
      logging.info("Leftovers of interrupted saves are left alone: %s", e)
    except OSError as e:  # A read-only folder: nothing to tidy there.
      logging.info("Could not lock %s (%s); leftovers are left alone.", workdir, e)

  def _tidy_unlocked(self) -> None:
    for manager in (self._latest, self._best):
      folder = Path(os.fspath(manager.directory))
      leftovers = sorted(folder.glob(f"*{TMP_SUFFIX}*")) if folder.is_dir() else []
      for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
        logging.warning("Removed %s, left by an interrupted save.", path)
      if leftovers:
        manager.reload()
    steps = self._best.all_steps()
    # Across processes Orbax's delete is collective: it is left to the saves,
    # which all processes make.
    if len(steps) > 1 and not self._multiprocess:
      keep = self._best.best_step()
      keep = steps[-1] if keep is None else keep
      for step in steps:
        if step != keep:
          self._best.delete(step)
          logging.warning("Removed %s/%d: best/ keeps only the best checkpoint, %d.",
                          self._best.directory, step, keep)

  def _read_best(self) -> None:
    step = self._best.best_step()
    steps = self._best.all_steps()
    step = steps[-1] if step is None and steps else step
    metrics = self._best.metrics(step) if step is not None else None
    self._best_value = metrics[self._best_metric] if metrics else -float("inf")
    self._best_step = step

  # -------------------------------------------------------------------------
  # Queries.

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    """The step of the best checkpoint (counting saves still being written)."""
    return self._best_step

  # -------------------------------------------------------------------------
  # Saving.

  def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> None:
    """Saves ``state`` at ``step``; also as the best if ``metrics`` beat the best so far.

    Saves run in the background; ``wait`` blocks until they are on disk. A
    checkpoint already at ``step`` (and, in ``latest/``, any newer one) is
    replaced: it was left damaged or by an earlier attempt.

    Raises:
      SaveError: an earlier save could not be written (one line: step,
        folder, cause, the step a rerun resumes from).
    """
    if self._failure is not None:
      self._failure_raised = True
      raise self._failure
    step = int(step)
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    value = metrics.get(self._best_metric)
    # The same step as the best on disk: that one is from an earlier attempt
    # of this step, and this state replaces it whatever its value.
    is_best = value is not None and (value > self._best_value or step == self._best_step)
    if is_best:
      self._best_value = value
      self._best_step = step
    if self._multiprocess:
      # Orbax synchronises processes with device computations, which must run
      # in the same order as the train loop's in every process: this thread.
      self._write(step, state, metrics, is_best)
      self._raise_failure()
      return
    # Fresh buffers: the caller may donate ``state``'s to its next step.
    copy = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
    self._writer.submit(self._write, step, copy, metrics, is_best)

  def _write(self, step: int, state: Any, metrics: dict[str, float], is_best: bool) -> None:
    """Writes one checkpoint; records a failure instead of raising it."""
    if self._failure is not None:
      return  # Nothing is written after a failed save.
    manager = self._best if is_best else self._latest
    try:
      if is_best:
        # Best first, and complete before latest starts: a failure then
        # leaves latest/ behind it, and the rerun writes best again.
        self._start(self._best, step, state, metrics, replace_newer=False)
        self._finish(self._best)
        for old in self._best.all_steps():
          if old != step:
            self._best.delete(old)  # best/ holds one checkpoint.
      manager = self._latest
      self._start(self._latest, step, state, metrics, replace_newer=True)
      if not self._multiprocess:
        self._finish(self._latest)  # On the background thread: costs the loop nothing.
    except Exception as e:  # noqa: BLE001 -- recorded, raised on the caller's thread.
      self._fail(e, self._in_flight.get(os.fspath(manager.directory), step), manager)

  def _start(self, manager: ocp.CheckpointManager, step: int, state: Any,
             metrics: dict[str, float], *, replace_newer: bool) -> None:
    self._finish(manager)  # Orbax's previous save (multi-process) fails here, not below.
    for old in manager.all_steps():
      if old == step or (replace_newer and old > step):
        logging.warning("Replacing checkpoint %s/%d (damaged or left by an earlier attempt) "
                        "with the state of step %d.", manager.directory, old, step)
        manager.delete(old)
    self._in_flight[os.fspath(manager.directory)] = step
    # force: Orbax would skip a step not newer than one it lists.
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics or None, force=True)

  def _finish(self, manager: ocp.CheckpointManager) -> None:
    manager.wait_until_finished()
    self._in_flight.pop(os.fspath(manager.directory), None)

  def _fail(self, e: Exception, step: int, manager: ocp.CheckpointManager) -> None:
    folder = Path(os.fspath(manager.directory))
    # The failed step's partial folder: remove it now, freeing what it took.
    for path in folder.glob(f"{step}{TMP_SUFFIX}*") if jax.process_index() == 0 else ():
      shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(Exception):
      self._latest.reload()
      self._best.reload()
    cause = _os_error(e)
    if cause is None:
      self._failure = e  # Not the disk's doing: raised as it is.
      return
    code, reason = cause
    advice = {errno.ENOSPC: "free space and rerun", errno.EDQUOT: "free space and rerun",
              errno.EACCES: "make it writable and rerun", errno.EROFS: "make it writable "
              "and rerun"}.get(code, "fix the cause and rerun")
    steps = [s for s in self._latest.all_steps() if s != step]
    resume = f"the run resumes from step {max(steps)}" if steps else "the run starts from step 0"
    self._failure = SaveError(f"could not write checkpoint {step} to {folder}: {reason}; "
                              f"{advice} — {resume}", code)
    self._failure.__cause__ = e

  def _raise_failure(self) -> None:
    if self._failure is not None and not self._failure_raised:
      self._failure_raised = True
      raise self._failure

  # -------------------------------------------------------------------------
  # Restoring.

  def _stored_tree(self, manager: ocp.CheckpointManager, step: int) -> Any:
    metadata = manager.metadata(step).item_metadata
    tree = getattr(metadata, "tree", None)
    if not isinstance(tree, dict):
      raise ValueError("its metadata is missing or unreadable")
    return tree

  def _restore_newest(self, manager: ocp.CheckpointManager, state: Any) -> Any | None:
    self.wait()  # Our own saves first.
    run = ocp.tree.serialize_tree(state, keep_empty_nodes=True)
    for step in sorted(manager.all_steps(), reverse=True):
      where = f"{manager.directory}/{step}"
      try:
        with _quiet_orbax():
          stored = self._stored_tree(manager, step)
      except Exception as e:  # noqa: BLE001 -- unreadable metadata: damaged.
        logging.warning("Checkpoint %s is damaged and was skipped (%s); trying the one before.",
                        where, _first_line(e))
        continue
      found = list(differences(stored, run))
      if found:
        more = len(found) - _MAX_DIFFERENCES
        listed = "; ".join(found[:_MAX_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
        raise MismatchError(f"checkpoint {where} does not fit this run's model or optimizer: "
                            f"{listed}; {MISMATCH_ADVICE}")
      try:
        with _quiet_orbax():
          restored = manager.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
      except jax.errors.JaxRuntimeError:
        raise  # The device's failure (out of memory), not the checkpoint's.
      except Exception as e:  # noqa: BLE001 -- the tree fits, so its data is unreadable.
        logging.warning("Checkpoint %s is damaged and was skipped (%s); trying the one before.",
                        where, _first_line(e))
        continue
      logging.info("Restored checkpoint %s.", where)
      return restored
    return None

  def restore_latest(self, state: Any) -> Any:
    """The newest readable checkpoint in ``state``'s structure and shardings.

    Returns ``state`` unchanged when there is none.

    Raises:
      MismatchError: the newest readable checkpoint's tree differs from
        ``state``'s (another model or optimizer); one line naming the first
        differences.
    """
    restored = self._restore_newest(self._latest, state)
    return state if restored is None else restored

  def restore_best(self, state: Any) -> Any:
    """The best checkpoint, else the newest; ``state`` unchanged when there is none.

    Raises:
      MismatchError: as ``restore_latest``.
    """
    restored = self._restore_newest(self._best, state)
    return self.restore_latest(state) if restored is None else restored

  # -------------------------------------------------------------------------
  # Ending.

  def wait(self) -> None:
    """Blocks until pending saves are on disk.

    Raises:
      SaveError: a save could not be written (once; later ``save`` calls
        raise it again).
    """
    self._writer.wait()
    if self._multiprocess and self._failure is None:
      for manager in (self._best, self._latest):
        step = self._in_flight.get(os.fspath(manager.directory))
        try:
          self._finish(manager)
        except Exception as e:  # noqa: BLE001 -- recorded, raised below.
          self._fail(e, step, manager)
          break
    self._raise_failure()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's resources; safe to call twice.

    Raises:
      SaveError: as ``wait``.
    """
    if self._closed:
      return
    self._closed = True
    _open.discard(self)
    try:
      self.wait()
    finally:
      self._writer.close()
      for manager in (self._latest, self._best):
        try:
          manager.close()
        except Exception:
          # Orbax raises a failed save again on each thread that waits for
          # it; this Checkpointer has already reported it.
          if self._failure is None:
            raise
