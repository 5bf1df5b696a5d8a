"""The library's training API: the train state and pure step functions.

``init_state`` builds a ``TrainState`` (parameters, BatchNorm statistics,
optimizer state); ``make_train_step`` and ``make_eval_step`` build pure
functions of (state, images, rng or keys) that compose with ``jax.jit``,
``jax.shard_map``, ``jax.pmap`` and ``jax.grad``. The trainer
(``jax_dae.train``) runs them in the compiled loops of ``jax_dae.loops``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jax_dae import corruptions, losses, metrics


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics."""

  batch_stats: Any = None


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
