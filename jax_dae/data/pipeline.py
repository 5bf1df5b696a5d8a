"""Placement of a split, and host streaming for splits that do not fit on the device.

Two ways to feed the train step, with identical batches:

* ``device``: the split lives on the devices as uint8 and the compiled loop in
  ``train.py`` gathers step ``s`` of epoch ``e`` as
  ``images[perm_e[s * B:(s + 1) * B]]`` with
  ``perm_e = jax.random.permutation(jax.random.fold_in(data_key, e), N)``.
* ``host``: ``host_batches`` computes the same ``perm_e`` (with JAX, on the
  CPU, once per epoch), gathers those rows on the host from an array or a
  memory-mapped ``.npy`` (the cache files), and a background thread puts them
  on the devices ``prefetch`` batches ahead. Only the rows of a batch are read
  (``os.preadv`` straight from the ``.npy`` file when the split is a
  memory-mapped cache file, so the process's memory stays bounded however
  large the split is; the kernel's page cache may keep the file, which it
  frees under pressure).

Multi-host: every process computes the same permutation, reads only the rows
of the global batch that its devices hold under ``sharding``, and the global
array is assembled with ``jax.make_array_from_process_local_data``.

``resolve_placement("auto", nbytes)`` picks ``device`` when the split fits a
fraction of the device's free memory (``device.memory_stats()``; on CPU the
host's available memory), else ``host``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import numpy as np
from absl import logging

PLACEMENTS = ("auto", "device", "host")


# ---------------------------------------------------------------------------
# Which rows, in which order.
# ---------------------------------------------------------------------------


def _cpu_device():
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS without cpu: use the default device.
    return None


def permutation(data_key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
  """The order of epoch ``epoch``: the one definition both placements use.

  ``train.py``'s device-resident loop computes it on the devices (jitted), the
  host stream on the CPU (``epoch_permutation``); threefry and the sort are
  exact, so both give the same order.
  """
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def epoch_permutation(data_key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
  """``permutation`` computed on the CPU, as a ``[num_examples]`` numpy array.

  Args:
    data_key: the training loop's data key (typed or raw uint32 key).
    epoch: epoch number (0-based).
    num_examples: size of the split.
  """
  cpu = _cpu_device()
  if cpu is None:
    return np.asarray(permutation(data_key, epoch, num_examples))
  with jax.default_device(cpu):
    return np.asarray(permutation(jax.device_put(data_key, cpu), epoch, num_examples))


def train_indices(data_key: jax.Array, *, num_examples: int, batch_size: int,
                  steps_per_epoch: int | None = None, start_step: int = 0,
                  num_steps: int | None = None) -> Iterator[np.ndarray]:
  """Row indices of the global batch of each step, as the device path takes them.

  Step ``s`` belongs to epoch ``s // steps_per_epoch`` and takes
  ``perm[(s % steps_per_epoch) * batch_size:][:batch_size]``.

  Args:
    data_key: the data key (``train.py``'s ``data_key``).
    num_examples: size of the split.
    batch_size: global batch size.
    steps_per_epoch: defaults to ``num_examples // batch_size`` (the
      remainder of each epoch is dropped, as in ``train.py``).
    start_step: first step (resume from a checkpoint at this step).
    num_steps: how many steps; ``None`` runs forever.

  Yields:
    ``[batch_size]`` int arrays.
  """
  steps_per_epoch = steps_per_epoch or num_examples // batch_size
  if steps_per_epoch < 1 or steps_per_epoch * batch_size > num_examples:
    raise ValueError(f"{steps_per_epoch} steps of {batch_size} do not fit in {num_examples} "
                     "examples.")
  step, epoch, perm = start_step, None, None
  while num_steps is None or step < start_step + num_steps:
    if step // steps_per_epoch != epoch:
      epoch = step // steps_per_epoch
      perm = epoch_permutation(data_key, epoch, num_examples)
    offset = (step % steps_per_epoch) * batch_size
    yield perm[offset : offset + batch_size]
    step += 1


def eval_indices(num_examples: int, batch_size: int) -> Iterator[np.ndarray]:
  """Rows ``0..num_examples-1`` in order, in batches; ``-1`` pads the last one."""
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, start + batch_size)
    yield np.where(idx < num_examples, idx, -1)


# ---------------------------------------------------------------------------
# Reading rows.
# ---------------------------------------------------------------------------


class RowReader:
  """Gathers rows (leading-axis entries) of a split held in memory or in a ``.npy`` file.

  A ``.npy`` path, or a whole-file ``np.memmap`` such as the cache returns, is
  read with ``os.preadv`` into fresh buffers: no pages of the file stay
  mapped in the process, so its resident memory does not grow with the
  split. Any other array is indexed in memory.
  """

  def __init__(self, images: np.ndarray | str | os.PathLike):
    self._fd = None
    self._array = None
    path = Path(images) if isinstance(images, (str, os.PathLike)) else None
    if path is None and isinstance(images, np.memmap) and getattr(images, "filename", None):
      path = Path(images.filename)
    header = _npy_header(path) if path is not None and path.suffix == ".npy" else None
    if header is not None and isinstance(images, np.memmap):
      shape, dtype, _ = header
      if (shape, dtype) != (images.shape, images.dtype) or not images.flags.c_contiguous:
        header = None  # A slice or view of the file: fall back to indexing it.
    if header is not None and hasattr(os, "preadv"):
      self.shape, self.dtype, self._offset = header
      self._fd = os.open(path, os.O_RDONLY)
      self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
    else:
      if path is not None and not isinstance(images, np.ndarray):
        images = np.load(path, mmap_mode="r")
      self._array = images
      self.shape, self.dtype = images.shape, images.dtype
      if isinstance(images, np.memmap):
        logging.info("Reading rows of a memory-mapped view with numpy indexing; its pages "
                     "count towards this process's memory.")

  def __len__(self) -> int:
    return self.shape[0]

  def take(self, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` as a new array; index ``-1`` gives a row of zeros (padding)."""
    indices = np.asarray(indices)
    if self._array is not None:
      out = np.asarray(self._array[np.maximum(indices, 0)])
      if (indices < 0).any():
        out = out.copy()
        out[indices < 0] = 0
      return out
    out = np.zeros((len(indices), *self.shape[1:]), self.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    rb = self._row_bytes
    for i, index in enumerate(indices.tolist()):
      if index < 0:
        continue
      if index >= self.shape[0]:
        raise IndexError(f"row {index} of a split with {self.shape[0]} rows")
      done, start = 0, self._offset + index * rb
      while done < rb:  # Regular files read in full; loop for safety.
        n = os.preadv(self._fd, [view[i * rb + done : (i + 1) * rb]], start + done)
        if n <= 0:
          raise OSError(f"short read of row {index} from the split's .npy file")
        done += n
    return out

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __del__(self):
    self.close()


def _npy_header(path: Path):
  """``(shape, dtype, data offset)`` of a C-ordered ``.npy`` file, else ``None``."""
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = {(1, 0): np.lib.format.read_array_header_1_0,
              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read is None:
        return None
      shape, fortran_order, dtype = read(f)
      offset = f.tell()
  except (OSError, ValueError):
    return None
  if fortran_order or dtype.hasobject:
    return None
  return tuple(shape), np.dtype(dtype), offset


# ---------------------------------------------------------------------------
# Host -> device, with prefetch.
# ---------------------------------------------------------------------------


def local_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...],
               axis: int = 0) -> slice:
  """The rows along ``axis`` of a global array that this process's devices hold.

  Args:
    sharding: the batch's sharding.
    global_shape: the global batch's shape.
    axis: the batch axis.

  Returns:
    A contiguous slice (what ``make_array_from_process_local_data`` expects).
  """
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
    s = index[axis] if index is not None and len(index) > axis else slice(None)
    start, stop, _ = s.indices(global_shape[axis])
    starts.append(start)
    stops.append(stop)
  return slice(min(starts), max(stops))


class HostBatches:
  """Iterator of device batches, produced by a background thread ``prefetch`` ahead.

  Use ``host_batches`` or ``eval_batches`` to make one. Iterate it, and
  ``close()`` it (or use ``with``) to stop the thread early.
  """

  _DONE = object()

  def __init__(self, reader: RowReader, index_batches: Iterable[np.ndarray], *,
               sharding: jax.sharding.Sharding | None, prefetch: int = 2, batch_axis: int = 0,
               with_counts: bool = False):
    if prefetch < 1:
      raise ValueError(f"prefetch={prefetch} must be >= 1.")
    self._reader = reader
    self._indices = iter(index_batches)
    self._sharding = sharding
    self._axis = batch_axis
    self._with_counts = with_counts
    self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True, name="HostBatches")
    self._thread.start()

  def _to_device(self, idx: np.ndarray):
    sharding = self._sharding
    global_shape = (*idx.shape, *self._reader.shape[1:])
    if sharding is None:
      return jax.device_put(self._reader.take(idx.reshape(-1)).reshape(global_shape))
    rows = local_rows(sharding, global_shape, self._axis)
    local_idx = idx[(slice(None),) * self._axis + (rows,)]
    local = self._reader.take(local_idx.reshape(-1)).reshape(
        *local_idx.shape, *self._reader.shape[1:])
    if jax.process_count() == 1:
      return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, global_shape)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      for idx in self._indices:
        batch = self._to_device(np.asarray(idx))
        item = (batch, int((np.asarray(idx) >= 0).sum())) if self._with_counts else batch
        if not self._put(item):
          return
      self._put(self._DONE)
    except BaseException as e:  # Re-raised in the consumer's thread.
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    if self._thread is None:
      raise StopIteration
    item = self._queue.get()
    if item is self._DONE:
      self.close()
      raise StopIteration
    if isinstance(item, BaseException):
      self.close()
      raise item
    return item

  def close(self) -> None:
    """Stops the producer thread and drops prefetched batches."""
    if self._thread is None:
      return
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()
    self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    if getattr(self, "_thread", None) is not None:
      self._stop.set()


def host_batches(
    images: np.ndarray | str | os.PathLike,
    *,
    data_key: jax.Array,
    batch_size: int,
    sharding: jax.sharding.Sharding | None = None,
    start_step: int = 0,
    num_steps: int | None = None,
    steps_per_epoch: int | None = None,
    steps_per_item: int = 1,
    prefetch: int = 2,
) -> HostBatches:
  """Training batches streamed from the host, identical to the device path's.

  Args:
    images: the split: an array, a memory-mapped cache array, or a ``.npy`` path.
    data_key: ``train.py``'s data key.
    batch_size: global batch size ``B``.
    sharding: sharding of a batch (e.g. ``NamedSharding(mesh, P("data"))``; with
      ``steps_per_item > 1``, ``P(None, "data")``); ``None``: default device.
    start_step: first global step (to resume mid-epoch).
    num_steps: steps to produce; ``None`` runs forever.
    steps_per_epoch: defaults to ``N // B``.
    steps_per_item: stack this many consecutive steps into one
      ``[steps_per_item, B, H, W, C]`` array (feeds a ``lax.scan`` over steps
      with one transfer); 1 yields ``[B, H, W, C]``.
    prefetch: batches (items) kept ready on the device.

  Returns:
    A ``HostBatches`` iterator of uint8 ``jax.Array`` batches.
  """
  reader = images if isinstance(images, RowReader) else RowReader(images)
  indices = train_indices(data_key, num_examples=len(reader), batch_size=batch_size,
                          steps_per_epoch=steps_per_epoch, start_step=start_step,
                          num_steps=num_steps)
  if steps_per_item > 1:
    if num_steps is not None and num_steps % steps_per_item:
      raise ValueError(f"num_steps={num_steps} is not a multiple of steps_per_item="
                       f"{steps_per_item}.")
    indices = _stack(indices, steps_per_item)
  return HostBatches(reader, indices, sharding=sharding, prefetch=prefetch,
                     batch_axis=1 if steps_per_item > 1 else 0)


def _stack(indices: Iterator[np.ndarray], k: int) -> Iterator[np.ndarray]:
  while True:
    group = [idx for _, idx in zip(range(k), indices, strict=False)]
    if len(group) < k:
      return
    yield np.stack(group)


def eval_batches(images: np.ndarray | str | os.PathLike, *, batch_size: int,
                 sharding: jax.sharding.Sharding | None = None,
                 prefetch: int = 2) -> HostBatches:
  """The whole split in order, in batches padded with zero rows at the end.

  Yields:
    ``(batch [batch_size, H, W, C] uint8, num_valid)``: rows ``num_valid:``
    of the last batch are padding.
  """
  reader = images if isinstance(images, RowReader) else RowReader(images)
  return HostBatches(reader, eval_indices(len(reader), batch_size), sharding=sharding,
                     prefetch=prefetch, with_counts=True)


# ---------------------------------------------------------------------------
# Placement.
# ---------------------------------------------------------------------------


def memory_budget(device: jax.Device | None = None, fraction: float = 0.5) -> int | None:
  """``fraction`` of the free memory of ``device`` in bytes, or ``None`` if unknown.

  Uses ``device.memory_stats()`` (``bytes_limit - bytes_in_use``) where the
  backend reports it (GPU, TPU); for a CPU device, whose memory is the host's,
  the host's available physical memory.
  """
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # Some backends raise instead of returning None.
    stats = None
  if stats and "bytes_limit" in stats:
    return int(fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
  if device.platform == "cpu":
    try:
      return int(fraction * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
      return None
  return None


def placement_for(num_bytes: int, budget_bytes: int | None) -> str:
  """``"device"`` if ``num_bytes`` fits ``budget_bytes``, else ``"host"`` (also if unknown)."""
  return "device" if budget_bytes is not None and num_bytes <= budget_bytes else "host"


def resolve_placement(placement: str, num_bytes: int, *, device: jax.Device | None = None,
                      fraction: float = 0.5) -> str:
  """Turns ``config.data.placement`` into ``"device"`` or ``"host"``.

  Args:
    placement: "auto", "device" or "host".
    num_bytes: bytes the split takes on each device (it is replicated).
    device: the device to measure; default the first local one.
    fraction: share of the free memory the split may take under "auto".

  Returns:
    "device" or "host".
  """
  if placement not in PLACEMENTS:
    raise ValueError(
        f"config.data.placement={placement!r} is unknown; allowed: {', '.join(PLACEMENTS)}."
    )
  if placement != "auto":
    return placement
  budget = memory_budget(device, fraction)
  choice = placement_for(num_bytes, budget)
  logging.info("Data placement auto -> %s (split %.1f MB, budget %s).", choice, num_bytes / 1e6,
               "unknown" if budget is None else f"{budget / 1e6:.1f} MB")
  return choice
