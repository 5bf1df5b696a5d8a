"""Training state, pure step functions, and the train-and-evaluate loop.

The fast path keeps each split on the accelerators as uint8 and runs many
steps per compiled call: a ``lax.scan`` whose body takes a batch by a
permuted index, corrupts it, runs forward and backward and the Optax update.
The host only sees one small array of losses per call.

Randomness: one root key from ``config.seed``; the data order of epoch ``e``
uses ``fold_in(data_key, e)`` and step ``s`` uses ``fold_in(step_key, s)``, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jax_dae import (
  checkpoint,
  corruptions,
  data,
  distributed,
  losses,
  metrics,
  models,
  plots,
  resume,
  stopping,
  validation,
  workdir_lock,
  writers,
)
from jax_dae.data import pipeline

DATA_AXIS = "data"


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics."""

  batch_stats: Any = None


# ---------------------------------------------------------------------------
# Builders: model, optimizer, state.
# ---------------------------------------------------------------------------

def create_model(config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None,
                 out_channels: int | None = None) -> nn.Module:
  """The model named by ``config.model.name`` in ``config.model.dtype``."""
  if config.model.dtype not in validation.DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r} is unknown; allowed: "
                     f"{', '.join(validation.DTYPES)}.")
  kwargs = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
  kwargs["dtype"] = jnp.dtype(config.model.dtype)
  if bn_axis_name is not None:
    kwargs["bn_axis_name"] = bn_axis_name
  if out_channels is not None:
    kwargs["out_channels"] = out_channels
  return models.create(config.model.name, **kwargs)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with coupled L2 (PyTorch ``Adam(weight_decay=...)``), AdamW, or SGD.

  SGD (with coupled L2 and ``config.optimizer.momentum``) is there for exact
  comparisons: Adam divides by the gradient's size, so it turns rounding noise
  in near-zero gradients into full-size steps.
  """
  opt = config.optimizer
  if opt.learning_rate <= 0:
    raise ValueError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}.")
  decay_rate = opt.get("decay_rate", 1.0)
  if not 0 < decay_rate <= 1:
    raise ValueError(f"config.optimizer.decay_rate must be in (0, 1], got {decay_rate}.")
  lr = opt.learning_rate
  if decay_rate < 1:
    # Exponential decay (seed 001's fully convolutional AE): x decay_rate every
    # decay_steps steps, smoothly.
    lr = optax.exponential_decay(lr, transition_steps=opt.decay_steps, decay_rate=decay_rate)
  if opt.name == "adam":
    return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.adam(lr))
  if opt.name == "adamw":
    return optax.adamw(lr, weight_decay=opt.weight_decay)
  if opt.name == "sgd":
    return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                       optax.sgd(lr, momentum=opt.get("momentum") or None))
  raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; allowed: adam, adamw, sgd.")


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
               key: jax.Array) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
  )


def _collect_aux(collection: Mapping) -> dict[str, jax.Array]:
  """Flattens values a model ``sow``-ed into the ``aux`` collection, summed per name."""
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
    name = str(path[-2].key) if len(path) >= 2 else str(path[-1])
    flat[name] = flat.get(name, 0.0) + value
  return flat


def to_float(images: jax.Array) -> jax.Array:
  """uint8 images to float32 in [0, 1] (float inputs pass through)."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Pure steps.
# ---------------------------------------------------------------------------


def make_train_step(*, loss_fn: losses.Loss, corrupt: corruptions.BatchCorruption,
                    axis_name: str | None = None) -> Callable:
  """Builds ``train_step(state, images, rng) -> (state, metrics)``.

  Args:
    loss_fn: from ``losses.create``.
    corrupt: from ``corruptions.parse``.
    axis_name: set under ``pmap`` or ``shard_map(..., check_vma=False)`` to
      average gradients and metrics across that axis (build the model with
      ``bn_axis_name`` too); leave ``None`` under ``jit`` with shardings,
      where XLA inserts the reductions.

  Returns:
    A pure function: ``images`` are clean ``[B, H, W, C]`` uint8 (or float in
    [0, 1]); ``rng`` is this step's key (per-example corruption keys and the
    model's sampling key are split from it).
  """

  def train_step(state: TrainState, images: jax.Array, rng: jax.Array):
    clean = to_float(images)
    corrupt_key, sample_key = jax.random.split(rng)
    # Example i of the global batch gets fold_in(corrupt_key, i) whether the
    # batch is whole (jit) or split over an axis (shard_map, pmap).
    local = clean.shape[0]
    index = jnp.arange(local)
    if axis_name is not None:
      index = index + jax.lax.axis_index(axis_name) * local
    noisy = corrupt(corruptions.example_keys(corrupt_key, index), clean)

    def compute_loss(params):
      reconstruction, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats},
          noisy,
          train=True,
          mutable=["batch_stats", "aux"],
          rngs={"sample": sample_key},
      )
      loss, terms = loss_fn(reconstruction, clean, _collect_aux(updates.get("aux", {})))
      return loss, (updates.get("batch_stats", state.batch_stats), terms)

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params
    )
    step_metrics = {"loss": loss, **terms}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      step_metrics = jax.lax.pmean(step_metrics, axis_name)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, step_metrics

  return train_step


def make_eval_step(*, corrupt: corruptions.BatchCorruption) -> Callable:
  """Builds ``eval_step(state, images, keys) -> per-image metrics``.

  Returns PSNR, SSIM and MSE of the reconstruction and of the corrupted input
  (the baseline), each ``[B]``. ``keys`` are per-example corruption keys.
  """

  reconstruct = make_reconstruct(corrupt=corrupt)

  def eval_step(state: TrainState, images: jax.Array, keys: jax.Array):
    clean = to_float(images)
    noisy, reconstruction = reconstruct(state, clean, keys)
    out = metrics.image_metrics(reconstruction, clean)
    out.update({f"input_{k}": v for k, v in metrics.image_metrics(noisy, clean).items()})
    return out

  return eval_step


def make_reconstruct(*, corrupt: corruptions.BatchCorruption) -> Callable:
  """Builds ``reconstruct(state, images, keys) -> (corrupted, reconstruction)``."""

  def reconstruct(state: TrainState, images: jax.Array, keys: jax.Array):
    noisy = corrupt(keys, to_float(images))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return noisy, state.apply_fn(variables, noisy, train=False)

  return reconstruct


# ---------------------------------------------------------------------------
# Compiled loops over device-resident data.
# ---------------------------------------------------------------------------


def largest_divisor_at_most(n: int, limit: int) -> int:
  """Largest divisor of ``n`` that is <= ``limit`` (at least 1)."""
  return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def make_train_loop(train_step: Callable, *, batch_size: int, steps_per_epoch: int,
                    steps_per_call: int, batch_sharding: NamedSharding | None = None) -> Callable:
  """``loop(state, images, perm, step_key[, num_steps]) -> (state, metrics [steps_per_call])``.

  Runs up to ``steps_per_call`` train steps in one compiled call; step ``s``
  uses the batch ``perm[(s mod steps_per_epoch) * batch_size :][:batch_size]``
  of the device-resident ``images`` and the key ``fold_in(step_key, s)``.

  Without ``num_steps`` the call is a ``lax.scan`` of exactly
  ``steps_per_call`` steps. With ``num_steps`` (an int32 scalar, traced: one
  compile serves every count) it runs the first ``num_steps`` of them in a
  ``lax.while_loop``, and metric rows past ``num_steps`` are zero; the trainer
  sizes its calls by time this way. Either form computes each step the same
  way, so how a run is cut into calls does not change its result.
  """

  def step_at(state, images, perm, step_key):
    offset = (state.step % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(perm, offset, batch_size)
    batch = jnp.take(images, idx, axis=0)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, jax.random.fold_in(step_key, state.step))

  def loop(state, images, perm, step_key, num_steps=None):
    if num_steps is None:
      return jax.lax.scan(lambda state, _: step_at(state, images, perm, step_key), state, None,
                          length=steps_per_call)
    row = jax.eval_shape(step_at, state, images, perm, step_key)[1]
    rows = jax.tree.map(lambda x: jnp.zeros((steps_per_call, *x.shape), x.dtype), row)

    def body(i, carry):
      state, rows = carry
      state, metrics = step_at(state, images, perm, step_key)
      return state, jax.tree.map(lambda r, m: r.at[i].set(m), rows, metrics)

    return jax.lax.fori_loop(0, jnp.minimum(num_steps, steps_per_call), body, (state, rows))

  return jax.jit(loop, donate_argnums=0)


class CallSizer:
  """How many steps the next compiled call runs, so that a call takes about ``seconds``.

  The first call runs one step; each later one scales the last call's count by
  how far its time was from the target (at most 4x up at a time), within
  ``[1, maximum]``. Progress, stop requests and time-based checkpoints are
  therefore seconds apart on any backend, however slow a step is.
  """

  def __init__(self, seconds: float, maximum: int):
    self._seconds = seconds
    self._maximum = maximum
    self._next = 1

  def next(self, limit: int) -> int:
    """The next call's step count, at most ``limit`` (the steps left in the epoch)."""
    return max(1, min(self._next, limit))

  def record(self, steps: int, seconds: float) -> None:
    """Updates the count from a call of ``steps`` steps that took ``seconds``."""
    per_step = max(seconds, 1e-6) / steps
    target = int(self._seconds / per_step)
    self._next = max(1, min(self._maximum, target, 4 * steps))


def make_streaming_train_loop(train_step: Callable) -> Callable:
  """``loop(state, batches, step_key) -> (state, metrics [K])`` over host-fed batches.

  ``batches`` is ``[K, B, H, W, C]``: K steps' batches stacked by
  ``data.pipeline.host_batches`` (same rows as the device-resident loop draws).
  """

  def loop(state, batches, step_key):
    def body(state, batch):
      return train_step(state, batch, jax.random.fold_in(step_key, state.step))

    return jax.lax.scan(body, state, batches)

  return jax.jit(loop, donate_argnums=0)


def masked_metric_sums(eval_step: Callable, state, batch: jax.Array, key: jax.Array,
                       start: int | jax.Array, num_examples: int) -> dict[str, jax.Array]:
  """Sums of ``eval_step``'s per-image metrics over the rows of ``batch`` that are real.

  ``batch`` holds examples ``start, start + 1, ...`` of a split padded to whole
  batches; rows at or past ``num_examples`` are padding and count zero.
  Example ``i`` is corrupted with ``fold_in(key, i)``.
  """
  index = start + jnp.arange(batch.shape[0])
  out = eval_step(state, batch, corruptions.example_keys(key, index))
  valid = index < num_examples
  return {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in out.items()}


def make_evaluate(eval_step: Callable, *, num_examples: int, batch_size: int,
                  batch_sharding: NamedSharding | None = None) -> Callable:
  """``evaluate(state, images, key) -> {metric: mean over num_examples}``.

  ``images`` is the split padded to a multiple of ``batch_size``; padding rows
  are masked out. Example ``i`` is corrupted with ``fold_in(key, i)``, so the
  result does not depend on the batch size.
  """

  def evaluate(state, images, key):
    num_batches = images.shape[0] // batch_size

    def body(sums, b):
      start = b * batch_size
      batch = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
      if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      out = masked_metric_sums(eval_step, state, batch, key, start, num_examples)
      return jax.tree.map(jnp.add, sums, out), None

    zeros = jax.tree.map(
        lambda x: jnp.zeros((), jnp.float32),
        jax.eval_shape(functools.partial(masked_metric_sums, eval_step,
                                         num_examples=num_examples),
                       state, images[:batch_size], key, 0))
    sums, _ = jax.lax.scan(body, zeros, jnp.arange(num_batches))
    return {k: v / num_examples for k, v in sums.items()}

  return jax.jit(evaluate)


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
  """Pads the leading axis with zeros up to a multiple of ``multiple``."""
  extra = -len(images) % multiple
  if not extra:
    return np.asarray(images)
  return np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])


# ---------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """1-D data-parallel mesh over the first ``num_devices`` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(
          f"config.mesh.num_devices={num_devices} but only {len(devices)} devices are visible."
      )
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def check_model_fits_data(model: nn.Module, name: str, image_shape: tuple[int, ...]) -> None:
  """Raises a one-line error if the model cannot map images of this shape to themselves."""
  try:
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *image_shape)))[0])
  except Exception as e:  # Shape errors surface as many exception types.
    raise ValueError(f"config.model.name={name!r} cannot take images of shape {image_shape} "
                     f"from config.data: {str(e).splitlines()[0]}") from None
  if out.shape[1:] != tuple(image_shape):
    raise ValueError(f"config.model.name={name!r} maps images of shape {image_shape} to "
                     f"{out.shape[1:]}; pick a model made for config.data's image size.")


def _check_finite(step_metrics: Mapping[str, np.ndarray], first_step: int) -> None:
  for name, values in step_metrics.items():
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise FloatingPointError(
          f"{name} became {values[bad[0]]} at step {first_step + int(bad[0]) + 1}; training "
          "stopped and the last checkpoint was kept. Lower config.optimizer.learning_rate or "
          "check the data."
      )


def shape_spec(tree: Any) -> Any:
  """Each array's shape, dtype and sharding: what lowering needs, without the buffers.

  Compiles that run on another thread take this rather than the state, whose
  buffers the train loop donates.
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def compile_on(executor: concurrent.futures.Executor, fn: Callable, state, *args
               ) -> concurrent.futures.Future:
  """A future of jitted ``fn`` compiled for ``(state-like, *args)`` on ``executor``'s thread."""
  spec = shape_spec(state)
  return executor.submit(lambda: fn.lower(spec, *args).compile())


class _DeviceFeed:
  """Training data resident on the devices; the compiled loop gathers each batch.

  A call runs any number of steps up to ``max_steps`` (one compile), so the
  trainer sizes its calls by time.
  """

  sized_by_time = True

  def __init__(self, train_step, images, data_key, step_key, *, replicated, batch_sharding,
               batch_size, steps_per_epoch, max_steps):
    self._images = distributed.replicate(images, replicated)
    self._step_key = step_key
    self._loop = make_train_loop(train_step, batch_size=batch_size,
                                 steps_per_epoch=steps_per_epoch, steps_per_call=max_steps,
                                 batch_sharding=batch_sharding)
    self._permutation = jax.jit(
        functools.partial(pipeline.permutation, data_key, num_examples=len(images)),
        out_shardings=replicated)
    self._perm = None

  def compile(self, state):
    self._loop = self._loop.lower(state, self._images, self._permutation(0), self._step_key,
                                  np.int32(1)).compile()

  def start_epoch(self, epoch: int) -> None:
    self._perm = self._permutation(epoch)

  def run(self, state, num_steps: int):
    return self._loop(state, self._images, self._perm, self._step_key, np.int32(num_steps))

  def close(self) -> None:
    pass


class _HostFeed:
  """Training data streamed from host memory or disk, prefetched to the devices.

  Batches are stacked ``steps_per_call`` at a time ahead of the loop, so every
  call runs that many steps.
  """

  sized_by_time = False

  def __init__(self, train_step, images, data_key, step_key, *, mesh, batch_size,
               steps_per_epoch, steps_per_call, start_step, num_steps, prefetch):
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))
    self._shape = jax.ShapeDtypeStruct((steps_per_call, batch_size, *images.shape[1:]),
                                       images.dtype, sharding=sharding)
    self._step_key = step_key
    self._loop = make_streaming_train_loop(train_step)
    self._batches = pipeline.host_batches(
        images, data_key=data_key, batch_size=batch_size, sharding=sharding,
        start_step=start_step, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
        steps_per_item=steps_per_call, prefetch=prefetch)

  def compile(self, state):
    self._loop = self._loop.lower(state, self._shape, self._step_key).compile()

  def start_epoch(self, epoch: int) -> None:
    del epoch  # The stream knows the epoch of every step.

  def run(self, state, num_steps: int):
    del num_steps  # Always the stacked count.
    return self._loop(state, next(self._batches), self._step_key)

  def close(self) -> None:
    self._batches.close()


class _DeviceEvaluator:
  """Mean metrics over a split resident on the devices: one compiled call."""

  def __init__(self, eval_step, images, key, *, replicated, batch_sharding, batch_size):
    self._key = key
    self._num_examples, self._batch_size = len(images), batch_size
    self._batch_sharding = batch_sharding
    self._images = distributed.replicate(pad_to_multiple(images, batch_size), replicated)
    self._evaluate = self._compile(eval_step)

  def _compile(self, eval_step):
    return make_evaluate(eval_step, num_examples=self._num_examples, batch_size=self._batch_size,
                         batch_sharding=self._batch_sharding)

  def with_step(self, eval_step) -> _DeviceEvaluator:
    """The same split and keys under another eval step, sharing the devices' copy."""
    other = copy.copy(self)
    other._evaluate = self._compile(eval_step)
    return other

  def compile_in_background(self, state, executor: concurrent.futures.Executor) -> None:
    """Compiles the evaluation for states like ``state`` on ``executor``'s thread.

    Started before training, the compile overlaps it instead of stalling the
    first evaluation; the first call waits for it if it has not finished.
    """
    self._evaluate = compile_on(executor, self._evaluate, state, self._images, self._key)

  def __call__(self, state) -> dict[str, float]:
    if isinstance(self._evaluate, concurrent.futures.Future):
      self._evaluate = self._evaluate.result()
    means = distributed.to_host(self._evaluate(state, self._images, self._key))
    return {k: float(v) for k, v in means.items()}


class _HostEvaluator:
  """Mean metrics over a split streamed from the host; sums stay on the devices."""

  def __init__(self, eval_step, images, key, *, batch_sharding, batch_size):
    self._key = key
    self._images = images
    self._sharding = batch_sharding
    self._batch_size = batch_size
    self._sums = self._compile(eval_step)

  @staticmethod
  def _compile(eval_step):
    return jax.jit(functools.partial(masked_metric_sums, eval_step),
                   static_argnames="num_examples")

  def with_step(self, eval_step) -> _HostEvaluator:
    """The same split and keys under another eval step."""
    other = copy.copy(self)
    other._sums = self._compile(eval_step)
    return other

  def compile_in_background(self, state, executor: concurrent.futures.Executor) -> None:
    """Nothing: the streamed evaluation compiles on its first batch."""
    del state, executor

  def __call__(self, state) -> dict[str, float]:
    num, sums, start = len(self._images), None, 0
    with pipeline.eval_batches(self._images, batch_size=self._batch_size,
                               sharding=self._sharding) as batches:
      for batch, _ in batches:
        out = self._sums(state, batch, self._key, start, num_examples=num)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        start += self._batch_size
    return {k: float(v) / num for k, v in distributed.to_host(sums).items()}


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """A run's keys: (init, data order, training corruption, evaluation corruption)."""
  init_key, data_key, step_key, eval_key = jax.random.split(jax.random.key(seed), 4)
  return init_key, data_key, step_key, eval_key


def _test_by_epoch(metrics_path: Path) -> dict[str, dict[str, float]]:
  """``{epoch: test metrics}`` of the epochs in config.train.test_epochs (last run wins)."""
  rows = writers.read_jsonl(metrics_path, missing_ok=True)
  return {str(int(row["epoch"])): {k[len("test/"):]: v for k, v in row.items()
                                   if k.startswith("test/")}
          for row in rows if "epoch" in row and any(k.startswith("test/") for k in row)}


class _PhaseClock:
  """Wall time spent in each named phase of a run (``results.json``'s ``phase_s``)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, phase: str):
    start = time.time()
    try:
      yield
    finally:
      self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - start


def _humanize(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def _open_workdir(config: ml_collections.ConfigDict, workdir: Path, main_process: bool) -> None:
  """Starts over or checks that a rerun may resume; writes ``config.json``."""
  has_checkpoints = any((workdir / "checkpoints").glob("*/[0-9]*"))
  if config.train.restart:
    moved = resume.start_over(workdir) if main_process else None
    if moved:
      logging.warning("config.train.restart: the previous run was moved to %s.", moved)
  elif has_checkpoints:
    resume.check_config_change(workdir, config)
  if main_process:
    writers.write_json(workdir / "config.json", config.to_dict())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates every epoch, checkpoints, and writes the test results.

  Resumes from the newest checkpoint in ``workdir`` if there is one (see
  ``jax_dae.resume`` for what a rerun may change). One run per workdir at a
  time. SIGINT and SIGTERM stop at the end of the running call, after saving
  a checkpoint, with ``stopping.Interrupted``.

  Args:
    config: an experiment config (see ``configs/default.py``).
    workdir: output folder: checkpoints, metrics, pictures, results.json.

  Returns:
    The dictionary written to ``workdir/results.json``.
  """
  start_time = time.time()
  validation.validate_config(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  main_process = distributed.is_main_process()
  with contextlib.ExitStack() as stack:
    if main_process:
      stack.enter_context(workdir_lock.hold(workdir))
    _open_workdir(config, workdir, main_process)
    stop = stack.enter_context(stopping.handle_signals())
    return _run(config, workdir, start_time, stop)


def _run(config: ml_collections.ConfigDict, workdir: Path, start_time: float,
         stop: stopping.StopRequest) -> dict:
  clock = _PhaseClock()
  main_process = distributed.is_main_process()
  if jax.default_backend() == "cpu":
    logging.warning("No accelerator found: training on the CPU, which is far slower; the run's "
                    "time is estimated after its first steps. A smoke setting: add :runlocal "
                    "to --config (about 3 minutes on a laptop).")

  # Data first: a missing dataset should fail before anything compiles.
  with clock("data"):
    splits = data.load(config.data)
  image_shape = tuple(splits["train"].shape[1:])
  mesh = make_mesh(config.mesh.num_devices)
  num_devices = mesh.devices.size
  batch_size = config.train.batch_size
  if batch_size % num_devices:
    raise ValueError(
        f"config.train.batch_size={batch_size} must be a multiple of the {num_devices} devices."
    )
  steps_per_epoch = len(splits["train"]) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"config.train.batch_size={batch_size} exceeds the {len(splits['train'])} training images."
    )
  num_steps = steps_per_epoch * config.train.num_epochs
  eval_batch = min(config.train.eval_batch_size, len(splits["val"]))
  eval_batch = -(-eval_batch // num_devices) * num_devices

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  model = create_model(config, out_channels=image_shape[-1])
  check_model_fits_data(model, config.model.name, image_shape)
  tx = create_optimizer(config)
  corrupt = corruptions.parse(config.corruption, image_shape)
  test_corruptions = {name: corruptions.parse(spec, image_shape)
                      for name, spec in config.test_corruptions.items()}
  loss_fn = losses.create(config.loss)

  init_key, data_key, step_key, eval_key = run_keys(config.seed)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints",
                                 max_to_keep=config.train.max_checkpoints, best_metric="psnr")
  with clock("init"):
    state = jax.jit(
        functools.partial(init_state, model, tx, image_shape), out_shardings=replicated
    )(init_key)
    state = ckpt.restore_latest(state)
  start_step = int(state.step)
  if start_step:
    logging.info("Resuming from step %d (epoch %d of %d, %d of its %d steps done).", start_step,
                 start_step // steps_per_epoch + 1, config.train.num_epochs,
                 start_step % steps_per_epoch, steps_per_epoch)
  elif (workdir / "metrics.jsonl").exists():
    logging.warning("No checkpoint in %s: starting from step 0.", workdir)

  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %d parameters; %d devices; %d steps/epoch.", config.model.name, num_params,
               num_devices, steps_per_epoch)

  train_step = make_train_step(loss_fn=loss_fn, corrupt=corrupt)
  eval_step = make_eval_step(corrupt=corrupt)
  placement = pipeline.resolve_placement(
      config.data.placement, splits["train"].nbytes,
      fraction=config.data.device_memory_fraction)
  if placement == "device":
    feed = _DeviceFeed(train_step, splits["train"], data_key, step_key, replicated=replicated,
                       batch_sharding=batch_sharding, batch_size=batch_size,
                       steps_per_epoch=steps_per_epoch,
                       max_steps=min(steps_per_epoch, config.train.steps_per_call))
  else:
    feed = _HostFeed(train_step, splits["train"], data_key, step_key, mesh=mesh,
                     batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                     steps_per_call=largest_divisor_at_most(steps_per_epoch,
                                                            config.train.steps_per_call),
                     start_step=start_step, num_steps=num_steps - start_step,
                     prefetch=config.data.prefetch)
  evaluator = (functools.partial(_DeviceEvaluator, replicated=replicated)
               if placement == "device" else _HostEvaluator)
  evaluators = {
      s: evaluator(eval_step, splits[s], eval_key, batch_sharding=batch_sharding,
                   batch_size=eval_batch)
      for s in ("val", "test")
  }
  # The test split under each of config.test_corruptions, by name.
  corruption_evaluators = {name: evaluators["test"].with_step(make_eval_step(corrupt=c))
                           for name, c in test_corruptions.items()}
  logging.info("Training data placement: %s.", placement)

  # The first images of the validation and test splits, shown after every
  # epoch and at the end: corrupted as the evaluation corrupts them.
  reconstruct = jax.jit(make_reconstruct(corrupt=corrupt))
  sample_inputs = {}
  for split in ("val", "test"):
    clean = np.asarray(splits[split][: config.train.num_samples])
    keys = corruptions.example_keys(eval_key, jnp.arange(len(clean)))
    sample_inputs[split] = clean, distributed.replicate(clean, replicated), keys

  # The evaluations and the sample reconstruction compile on a background
  # thread, overlapping the train loop's compile and the first epoch instead
  # of stalling the first validation (XLA's compile releases the GIL; only
  # tracing holds it).
  compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="compile_eval")
  for evaluate in (*evaluators.values(), *corruption_evaluators.values()):
    evaluate.compile_in_background(state, compiler)
  reconstructors = {}  # by the samples' shape: one compile when both splits have 8
  for clean, on_device, keys in sample_inputs.values():
    if clean.shape not in reconstructors:
      reconstructors[clean.shape] = compile_on(compiler, reconstruct, state, on_device, keys)
  compiler.shutdown(wait=False)
  # Compile ahead of time so compile time is measured apart from training.
  t0 = time.time()
  feed.compile(state)
  compile_s = time.time() - t0
  logging.info("Compiled the train loop in %.1f s.", compile_s)

  writer = writers.MetricWriter(workdir, active=main_process)
  # Pictures are encoded and written on this thread while training goes on.
  pictures = writers.Background("pictures")
  if main_process:
    pictures.submit(plots.prepare)  # Matplotlib's import, off the critical path.

  def samples(state, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's first images: corrupted as the evaluation corrupts them, reconstructed, clean."""
    clean, on_device, keys = sample_inputs[split]
    noisy, recon = distributed.to_host(
        reconstructors[clean.shape].result()(state, on_device, keys))
    return noisy, recon, clean

  def stop_early(epochs_done: int) -> bool:
    best_epoch = (ckpt.best_step() or 0) // steps_per_epoch
    return bool(config.train.patience) and epochs_done - best_epoch >= config.train.patience

  def stop_if_asked(step: int) -> None:
    """After a stop signal: wait for the checkpoint of ``step``, then ``Interrupted``."""
    if stop:
      with clock("checkpoint"):
        ckpt.close()
      feed.close()
      writer.close()
      pictures.close()
      logging.warning("Stopped at step %d: checkpoint saved; rerun the same command to resume.",
                      step)
      stop.check(step)

  sizer = CallSizer(config.train.seconds_per_call, config.train.steps_per_call)
  train_time = 0.0
  trained_images = 0
  step = start_step
  last_save = time.time()
  announced_eta = False
  stop.arm()
  bar = tqdm(total=num_steps * batch_size, initial=start_step * batch_size, unit="img",
             dynamic_ncols=True, leave=False, disable=not main_process, mininterval=0,
             smoothing=0.1)
  for epoch in range(start_step // steps_per_epoch, config.train.num_epochs):
    if stop_early(epoch):
      logging.info("Early stop after epoch %d: no better validation PSNR for %d epochs.",
                   epoch, config.train.patience)
      break
    feed.start_epoch(epoch)
    bar.set_description(f"epoch {epoch + 1}/{config.train.num_epochs}")
    epoch_end = (epoch + 1) * steps_per_epoch
    epoch_losses = []
    while step < epoch_end:
      calls = sizer.next(epoch_end - step) if feed.sized_by_time else None
      t = time.time()
      state, step_metrics = feed.run(state, calls)
      step_metrics = distributed.to_host(step_metrics)
      call_s = time.time() - t
      calls = calls or len(step_metrics["loss"])
      step_metrics = {k: v[:calls] for k, v in step_metrics.items()}
      sizer.record(calls, call_s)
      train_time += call_s
      _check_finite(step_metrics, step)
      step += calls
      trained_images += calls * batch_size
      epoch_losses.append(step_metrics["loss"])
      means = {k: float(np.mean(v)) for k, v in step_metrics.items()}
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
      bar.update(calls * batch_size)
      bar.set_postfix(loss=f"{means['loss']:.4f}")
      if not announced_eta and step - start_step > calls:  # the 2nd call: compiled and warm
        announced_eta = True
        rate = calls * batch_size / call_s
        logging.info("Training at %.1f img/s on %s: about %s for the %d steps left.", rate,
                     jax.default_backend(), _humanize((num_steps - step) * batch_size / rate),
                     num_steps - step)
      if step < epoch_end and (stop or (config.train.checkpoint_every_s and time.time() - last_save
                                        >= config.train.checkpoint_every_s)):
        with clock("checkpoint"):
          ckpt.save(step, state)
        last_save = time.time()
        stop_if_asked(step)

    with clock("validation"):
      val = evaluators["val"](state)
    epoch_loss = float(np.mean(np.concatenate(epoch_losses)))
    scalars = {f"val/{k}": v for k, v in val.items()}
    if epoch + 1 in config.train.test_epochs:
      with clock("test"):
        scalars |= {f"test/{k}": v for k, v in evaluators["test"](state).items()}
    writer.write_scalars(step, scalars | {"epoch": epoch + 1, "train/epoch_loss": epoch_loss})
    logging.info("epoch %d: loss %.5f, val PSNR %.2f dB, SSIM %.4f (input %.2f / %.4f)",
                 epoch + 1, epoch_loss, val["psnr"], val["ssim"], val["input_psnr"],
                 val["input_ssim"])
    with clock("checkpoint"):
      ckpt.save(step, state, metrics=val)
    last_save = time.time()
    with clock("samples"):
      noisy, recon, clean = samples(state, "val")
      if main_process:
        pictures.submit(plots.save_sample_grid, workdir / "samples" / f"epoch_{epoch + 1:03d}.png",
                        noisy, recon, clean / 255.0)
    stop_if_asked(step)
  bar.close()
  with clock("checkpoint"):
    ckpt.wait()
  feed.close()

  with clock("test"):
    t = time.time()
    test = evaluators["test"](state)
    eval_s = time.time() - t
  # The best checkpoint is often the final state: then its metrics are the same.
  final_is_best = ckpt.best_step() == int(state.step)
  with clock("checkpoint"):
    best_state = state if final_is_best else ckpt.restore_best(state)
    ckpt.close()

  def at_best(evaluate, final_metrics):
    return final_metrics if final_is_best else evaluate(best_state)

  with clock("test"):
    test_best = at_best(evaluators["test"], test)

  def model_only(m):
    return {k: v for k, v in m.items() if not k.startswith("input_")}

  def input_only(m):
    return {k[len("input_"):]: v for k, v in m.items() if k.startswith("input_")}

  by_corruption = {}
  with clock("test"):
    for name, evaluate in corruption_evaluators.items():
      metrics = evaluate(state)
      metrics_best = at_best(evaluate, metrics)
      by_corruption[name] = {"test": model_only(metrics), "test_input": input_only(metrics),
                             "test_at_best_val": model_only(metrics_best)}

  # The first test faces, as corrupted for the evaluation, through the final model.
  with clock("samples"):
    noisy, recon, test_faces = samples(state, "test")
    if main_process and len(test_faces):
      pictures.submit(plots.save_sample_grid, workdir / "samples" / "test.png", noisy, recon,
                      test_faces / 255.0)
      pictures.submit(writers.save_npz, workdir / "test_samples.npz",
                      corrupted=plots.to_uint8(noisy), reconstructed=plots.to_uint8(recon),
                      clean=test_faces)

  results = {
      "config": config.to_dict(),
      "step": int(state.step),
      "epochs": int(state.step) // steps_per_epoch,
      "num_params": num_params,
      "test": model_only(test),
      "test_input": input_only(test),
      "best_val_step": int(best_state.step),
      "test_at_best_val": model_only(test_best),
      "test_by_epoch": _test_by_epoch(workdir / "metrics.jsonl"),
      "test_by_corruption": by_corruption,
      "num_test_images": len(splits["test"]),
      "devices": [str(d) for d in mesh.devices.flat],
      "placement": placement,
      "compile_s": compile_s,
      "train_s": train_time,
      "train_images_per_s": trained_images / train_time if train_time else math.nan,
      "test_eval_s": eval_s,
      "wall_s": time.time() - start_time,
  }
  # Where the wall time went; "other" is everything not in a named phase
  # (model building, logging, metric writing).
  phases = clock.seconds | {"compile": compile_s, "train": train_time}
  results["phase_s"] = phases | {"other": results["wall_s"] - sum(phases.values())}
  logging.info("wall time %.1f s: %s.", results["wall_s"], ", ".join(
      f"{k} {v:.1f} s" for k, v in sorted(results["phase_s"].items(), key=lambda kv: -kv[1])))
  writer.write_scalars(int(state.step), {f"test/{k}": v for k, v in test.items()})
  writer.close()
  if main_process:
    pictures.submit(plots.save_curves, workdir / "metrics.jsonl", workdir / "curves.png")
  pictures.close()  # Every picture is on disk before results.json says the run is done.
  if main_process:
    writers.write_json(workdir / "results.json", results)
  logging.info("test: PSNR %.2f dB, SSIM %.4f (corrupted input %.2f / %.4f); %s",
               test["psnr"], test["ssim"], test["input_psnr"], test["input_ssim"],
               workdir / "results.json")
  return results
