"""Evaluation of a split: mean PSNR/SSIM/MSE of the model and of its corrupted input.

Example ``i`` of a split is always corrupted with ``fold_in(key, i)``, so a
result does not depend on the batch size, the device count or the feed.
``DeviceEvaluator`` evaluates a split resident on the devices in one compiled
call; ``HostEvaluator`` streams it from the host. Given ``replicas`` of
more than one seed, both evaluate a stacked state (``jax_dae.replicas``):
replica ``k`` under its own key ``key[k]``, and every mean comes back as
``[N]``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jax_dae import corruptions, distributed
from jax_dae import replicas as replicas_lib
from jax_dae.data import pipeline


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
                  batch_sharding: NamedSharding | None = None,
                  replicas: replicas_lib.Replicas = replicas_lib.SINGLE) -> Callable:
  """``evaluate(state, images, key) -> {metric: mean over num_examples}``.

  ``images`` is the split padded to a multiple of ``batch_size``; padding rows
  are masked out. Example ``i`` is corrupted with ``fold_in(key, i)``, so the
  result does not depend on the batch size. With ``replicas``: mapped over
  the replica axis of ``state`` and ``key`` (the images are shared).
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

  return jax.jit(replicas.map(evaluate, in_axes=(0, None, 0)))


def make_recompute_batch_stats(batch_statistics: Callable, *, batch_size: int,
                               replicas: replicas_lib.Replicas = replicas_lib.SINGLE) -> Callable:
  """``recompute(state, images, key) -> batch_stats`` of ``state``'s current weights.

  The running averages a model keeps in training lag its weights: they mix
  batches of the last ~``1 / (1 - momentum)`` steps, taken under older
  weights. This replaces them with the population statistics of ``images``
  (a fixed set of training images, corrupted with keys from ``key``)
  under the current weights: each group of ``batch_size`` (the training
  batch, so every layer sees inputs normalised as in training) gives its
  mean and variance (``steps.make_batch_statistics``); the means are
  averaged, and the variance is the groups' mean square less the squared
  mean. The trainer puts them in the state: training steps never read
  them, so training goes on exactly as it would have (only evaluation,
  checkpoints and inference see the new statistics).

  Args:
    batch_statistics: from ``steps.make_batch_statistics``.
    batch_size: images per group; ``images`` must hold a multiple of it.
    replicas: maps over the replica axis of ``state`` and ``key``.
  """

  def recompute(state, images, key):
    groups = images.shape[0] // batch_size
    corrupt_key, model_key = jax.random.split(key)
    keys = corruptions.example_keys(corrupt_key, jnp.arange(groups * batch_size))
    group_keys = keys.reshape(groups, batch_size, *keys.shape[1:])
    per_group = jax.lax.map(
        lambda xs: batch_statistics(state, *xs),
        (images[:groups * batch_size].reshape(groups, batch_size, *images.shape[1:]),
         group_keys, jax.random.split(model_key, groups)),
        batch_size=min(groups, 16))  # 16 groups per vectorised call

    per_group_means = {path[:-1]: x for path, x in jax.tree_util.tree_leaves_with_path(per_group)
                       if getattr(path[-1], "key", None) == "mean"}

    def combine(path, stats, current):
      if getattr(path[-1], "key", None) != "var":
        return jnp.mean(stats, axis=0).astype(current.dtype)
      means = per_group_means[path[:-1]]
      second = jnp.mean(stats + means**2, axis=0)
      return (second - jnp.mean(means, axis=0) ** 2).astype(current.dtype)

    return jax.tree_util.tree_map_with_path(combine, per_group, state.batch_stats)

  return jax.jit(replicas.map(recompute, in_axes=(0, None, 0)))


def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
  """Pads the leading axis with zeros up to a multiple of ``multiple``."""
  extra = -len(images) % multiple
  if not extra:
    return np.asarray(images)
  return np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])


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


class DeviceEvaluator:
  """Mean metrics over a split resident on the devices: one compiled call."""

  def __init__(self, eval_step, images, key, *, replicated, batch_sharding, batch_size,
               replicas: replicas_lib.Replicas = replicas_lib.SINGLE):
    self._key = key
    self._replicas = replicas
    self._num_examples, self._batch_size = len(images), batch_size
    self._batch_sharding = batch_sharding
    self._images = distributed.replicate(pad_to_multiple(images, batch_size), replicated)
    self._evaluate = self._compile(eval_step)

  def _compile(self, eval_step):
    return make_evaluate(eval_step, num_examples=self._num_examples, batch_size=self._batch_size,
                         batch_sharding=self._batch_sharding, replicas=self._replicas)

  def with_step(self, eval_step) -> DeviceEvaluator:
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

  def __call__(self, state) -> dict[str, Any]:
    """``{metric: mean}``: floats, or ``[N]`` arrays for stacked replicas."""
    if isinstance(self._evaluate, concurrent.futures.Future):
      self._evaluate = self._evaluate.result()
    means = distributed.to_host(self._evaluate(state, self._images, self._key))
    return {k: _to_float(v) for k, v in means.items()}


class HostEvaluator:
  """Mean metrics over a split streamed from the host; sums stay on the devices."""

  def __init__(self, eval_step, images, key, *, batch_sharding, batch_size,
               replicas: replicas_lib.Replicas = replicas_lib.SINGLE):
    self._key = key
    self._images = images
    self._sharding = batch_sharding
    self._batch_size = batch_size
    self._replicas = replicas
    self._sums = self._compile(eval_step)

  def _compile(self, eval_step):
    def sums(state, batch, key, start, num_examples):
      one = functools.partial(masked_metric_sums, eval_step, num_examples=num_examples)
      return self._replicas.map(one, in_axes=(0, None, 0, None))(state, batch, key, start)

    return jax.jit(sums, static_argnames="num_examples")

  def with_step(self, eval_step) -> HostEvaluator:
    """The same split and keys under another eval step."""
    other = copy.copy(self)
    other._sums = self._compile(eval_step)
    return other

  def compile_in_background(self, state, executor: concurrent.futures.Executor) -> None:
    """Nothing: the streamed evaluation compiles on its first batch."""
    del state, executor

  def __call__(self, state) -> dict[str, Any]:
    """``{metric: mean}``: floats, or ``[N]`` arrays for stacked replicas."""
    num, sums, start = len(self._images), None, 0
    with pipeline.eval_batches(self._images, batch_size=self._batch_size,
                               sharding=self._sharding) as batches:
      for batch, _ in batches:
        out = self._sums(state, batch, self._key, start, num_examples=num)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        start += self._batch_size
    return {k: _to_float(v / num) for k, v in distributed.to_host(sums).items()}


def _to_float(value) -> float | np.ndarray:
  """A scalar as a float; per-replica values as a float64 array."""
  value = np.asarray(value, np.float64)
  return float(value) if value.ndim == 0 else value


class BatchStatsRecompute:
  """``recompute(state) -> batch_stats``: ``make_recompute_batch_stats`` on fixed device images.

  The images are the first ``images`` rounded down to whole groups of
  ``batch_size``; ``key`` (``[N]`` for stacked replicas) draws their
  corruption.
  """

  def __init__(self, batch_statistics, images, key, *, replicated, batch_size,
               replicas: replicas_lib.Replicas = replicas_lib.SINGLE):
    count = len(images) // batch_size * batch_size
    if not count:
      raise ValueError(f"BatchStatsRecompute: {len(images)} images make no group of "
                       f"{batch_size}.")
    self._images = distributed.replicate(np.asarray(images[:count]), replicated)
    self._key = key
    self._recompute = make_recompute_batch_stats(batch_statistics, batch_size=batch_size,
                                                 replicas=replicas)

  def compile_in_background(self, state, executor: concurrent.futures.Executor) -> None:
    """As ``DeviceEvaluator.compile_in_background``."""
    self._recompute = compile_on(executor, self._recompute, state, self._images, self._key)

  def __call__(self, state):
    """BatchNorm statistics of ``state``'s weights."""
    if isinstance(self._recompute, concurrent.futures.Future):
      self._recompute = self._recompute.result()
    return self._recompute(state, self._images, self._key)


class Samples:
  """The first images of each split, corrupted as the evaluation corrupts them, reconstructed.

  The reconstruction compiles on ``executor``'s thread (once per distinct
  shape), overlapping the train loop's compile. With stacked ``replicas``,
  ``key`` is ``[N]`` and a call shows one replica (its own corruption).
  """

  def __init__(self, reconstruct: Callable, splits: dict[str, np.ndarray], num: int, key, *,
               replicated: NamedSharding, state, executor: concurrent.futures.Executor,
               replicas: replicas_lib.Replicas = replicas_lib.SINGLE):
    reconstruct = jax.jit(reconstruct)
    self._replicas = replicas
    self._key = key
    one = self._replicas.take(state, 0)
    self._inputs, compiled = {}, {}
    for split, images in splits.items():
      clean = np.asarray(images[:num])
      on_device = distributed.replicate(clean, replicated)
      keys = self._example_keys(0, len(clean))
      if clean.shape not in compiled:  # one compile when both splits show as many
        compiled[clean.shape] = compile_on(executor, reconstruct, one, on_device, keys)
      self._inputs[split] = clean, on_device, compiled[clean.shape]

  def _example_keys(self, replica: int, num: int) -> jax.Array:
    key = self._key[replica] if self._replicas.stacked else self._key
    return corruptions.example_keys(key, jnp.arange(num))

  def __call__(self, state, split: str, replica: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corrupted, reconstructed, clean) of ``split``'s first images, on the host."""
    clean, on_device, compiled = self._inputs[split]
    keys = self._example_keys(replica, len(clean))
    one = self._replicas.take(state, replica)
    noisy, recon = distributed.to_host(compiled.result()(one, on_device, keys))
    return noisy, recon, clean
