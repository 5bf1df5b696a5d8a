"""Evaluation of a split: mean PSNR/SSIM/MSE of the model and of its corrupted input.

Example ``i`` of a split is always corrupted with ``fold_in(key, i)``, so a
result does not depend on the batch size, the device count or the feed.
``DeviceEvaluator`` evaluates a split resident on the devices in one compiled
call; ``HostEvaluator`` streams it from the host.
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

  def __init__(self, eval_step, images, key, *, replicated, batch_sharding, batch_size):
    self._key = key
    self._num_examples, self._batch_size = len(images), batch_size
    self._batch_sharding = batch_sharding
    self._images = distributed.replicate(pad_to_multiple(images, batch_size), replicated)
    self._evaluate = self._compile(eval_step)

  def _compile(self, eval_step):
    return make_evaluate(eval_step, num_examples=self._num_examples, batch_size=self._batch_size,
                         batch_sharding=self._batch_sharding)

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

  def __call__(self, state) -> dict[str, float]:
    if isinstance(self._evaluate, concurrent.futures.Future):
      self._evaluate = self._evaluate.result()
    means = distributed.to_host(self._evaluate(state, self._images, self._key))
    return {k: float(v) for k, v in means.items()}


class HostEvaluator:
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

  def with_step(self, eval_step) -> HostEvaluator:
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


class Samples:
  """The first images of each split, corrupted as the evaluation corrupts them, reconstructed.

  The reconstruction compiles on ``executor``'s thread (once per distinct
  shape), overlapping the train loop's compile.
  """

  def __init__(self, reconstruct: Callable, splits: dict[str, np.ndarray], num: int, key, *,
               replicated: NamedSharding, state, executor: concurrent.futures.Executor):
    reconstruct = jax.jit(reconstruct)
    self._inputs, compiled = {}, {}
    for split, images in splits.items():
      clean = np.asarray(images[:num])
      keys = corruptions.example_keys(key, jnp.arange(len(clean)))
      on_device = distributed.replicate(clean, replicated)
      if clean.shape not in compiled:  # one compile when both splits show as many
        compiled[clean.shape] = compile_on(executor, reconstruct, state, on_device, keys)
      self._inputs[split] = clean, on_device, keys, compiled[clean.shape]

  def __call__(self, state, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corrupted, reconstructed, clean) of ``split``'s first images, on the host."""
    clean, on_device, keys, compiled = self._inputs[split]
    noisy, recon = distributed.to_host(compiled.result()(state, on_device, keys))
    return noisy, recon, clean
