"""Sizes of the registered models against the numbers the seeds publish.

``scripts/param_counts.py`` prints this inventory and
``tests/test_model_families.py`` asserts it. Counting uses ``jax.eval_shape``,
so even the 50M-parameter Graz networks are never materialised.

We count Flax's ``params`` collection: kernels, biases and BatchNorm's
scale/bias, which is what Keras reports as *trainable* parameters. BatchNorm's
running mean and variance (Keras's *non-trainable* parameters, part of its
"Total params") live in ``batch_stats`` and are reported apart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Each family's natural input, keyed by the module that defines its class.
NATURAL_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "jax_dae.models.cae": (112, 112, 3),  # S0: LFW crops
    "jax_dae.models.graz": (64, 64, 3),  # S1: AFHQ cats and dogs
    "jax_dae.models.dual": (100, 100, 1),  # S2: grayscale faces
    "jax_dae.models.mnist": (28, 28, 1),  # S3: MNIST
}


@dataclasses.dataclass(frozen=True)
class Published:
  """A parameter count published by a seed.

  Attributes:
    count: the number as printed in the seed.
    source: where the seed prints it.
    note: why our count differs from it (empty where they match).
  """

  count: int
  source: str
  note: str = ""


_S2_SINGLE = ("single AE reconstructed (seed 002 publishes no layers); nearest natural layout, "
              "see docs/models.md")
_S2_SKIP = ("plus reconstructed 1x1 skip adapters (3,225 / 3,325 sep.; seed's +3,676 / +3,786)")

# Keys are registry names, or "name:subtree" for a named sub-network's params.
PUBLISHED: dict[str, Published] = {
    "GrazAE_net1": Published(50_704_803, "seed 001 Table 1, network 1 (trainable)"),
    "GrazAE_net2": Published(50_704_803, "seed 001 Table 1, network 2 (trainable)"),
    "GrazAE_net3": Published(50_680_971, "seed 001 Table 1, network 3 (trainable)"),
    "SingleAE": Published(36_386, "seed 002 results table", _S2_SINGLE),
    "SingleAE_sep": Published(15_760, "seed 002 results table", _S2_SINGLE),
    "DualAE": Published(87_812, "seed 002 results table", "= SingleAE + second stage"),
    "DualAE_sep": Published(52_445, "seed 002 results table", "= SingleAE_sep + second stage"),
    "DualAE:second": Published(51_426, "SPEC.md (87,812 - 36,386)"),
    "DualAE_sep:second": Published(36_685, "SPEC.md (52,445 - 15,760)"),
    "DualSkipAE": Published(91_488, "seed 002 results table", _S2_SKIP),
    "DualSkipAE_sep": Published(56_231, "seed 002 results table", _S2_SKIP),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One model (or sub-network) of the inventory.

  Attributes:
    name: registry name, or ``"name:subtree"``.
    input_shape: ``(H, W, C)`` the model was sized at.
    params: number of trainable parameters (Flax ``params``).
    batch_stats: number of BatchNorm running statistics (Keras's
      non-trainable parameters).
    published: the seed's number, where it publishes one.
    latents: shapes sown as ``intermediates/.../latent``, by path.
  """

  name: str
  input_shape: tuple[int, int, int] | None
  params: int | None
  batch_stats: int | None
  published: Published | None
  latents: dict[str, tuple[int, ...]]

  @property
  def difference(self) -> int | None:
    """Ours minus the seed's, where both exist."""
    if self.published is None or self.params is None:
      return None
    return self.params - self.published.count


def model_class(entry: Any) -> type:
  """The module class behind a registry entry (unwrapping ``functools.partial``)."""
  while isinstance(entry, functools.partial):
    entry = entry.func
  return entry


def natural_input_shape(name: str) -> tuple[int, int, int] | None:
  """The ``(H, W, C)`` a registered model is built for, or ``None`` if unknown."""
  from jax_dae import models  # Deferred: models/__init__ imports the families.

  return NATURAL_INPUT_SHAPES.get(model_class(models._REGISTRY[name]).__module__)


def _abstract_variables(model: nn.Module, input_shape: tuple[int, ...]):
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  key = jax.random.key(0)
  return jax.eval_shape(
      lambda x: model.init({"params": key, "sample": key}, x, train=False), x
  )


def _size(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def count_parameters(model: nn.Module, input_shape: tuple[int, ...],
                     subtree: str | None = None, *, variables=None) -> tuple[int, int]:
  """Counts a model's parameters without allocating them.

  Args:
    model: a Flax module taking ``[B, H, W, C]`` images and ``train``.
    input_shape: ``(H, W, C)``.
    subtree: a top-level submodule name to count alone (e.g. ``"second"``).
    variables: the model's abstract variables, if already traced.

  Returns:
    ``(params, batch_stats)``: trainable parameters and BatchNorm statistics.
  """
  if variables is None:
    variables = _abstract_variables(model, input_shape)
  params = variables.get("params", {})
  stats = variables.get("batch_stats", {})
  if subtree is not None:
    params, stats = params[subtree], stats.get(subtree, {})
  return _size(params), _size(stats)


def latent_shapes(model: nn.Module, input_shape: tuple[int, ...], *,
                  variables=None) -> dict[str, tuple[int, ...]]:
  """Shapes (batch 1) of everything the model sows as ``intermediates/.../latent``.

  Args:
    model: a Flax module taking ``[B, H, W, C]`` images and ``train``.
    input_shape: ``(H, W, C)``.
    variables: the model's abstract variables, if already traced.

  Returns:
    ``{path: shape}``; the path is ``"latent"`` for a top-level latent and
    ``"first/latent"`` etc. inside submodules; empty if nothing is sown.
  """
  if variables is None:
    variables = _abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"],
                               rngs={"sample": jax.random.key(0)}),
      variables, x,
  )
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.get("intermediates", {}))[0]:
    keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    if "latent" in keys:
      found["/".join(keys[: keys.index("latent") + 1])] = tuple(leaf.shape)
  return found


def rows(names: Iterable[str] | None = None) -> list[Row]:
  """The inventory of registered models (all of them by default).

  Models from a family with no known natural input size get a row with
  ``None`` counts. Sub-networks with a published count (``"DualAE:second"``)
  follow their model.

  Args:
    names: registry names to include.

  Returns:
    One ``Row`` per model and published sub-network.
  """
  from jax_dae import models  # Deferred: models/__init__ imports the families.

  result = []
  for name in models.available() if names is None else names:
    shape = natural_input_shape(name)
    if shape is None:
      result.append(Row(name, None, None, None, PUBLISHED.get(name), {}))
      continue
    model = models.create(name)
    variables = _abstract_variables(model, shape)
    params, stats = count_parameters(model, shape, variables=variables)
    latents = latent_shapes(model, shape, variables=variables)
    result.append(Row(name, shape, params, stats, PUBLISHED.get(name), latents))
    for key, published in PUBLISHED.items():
      parent, _, subtree = key.partition(":")
      if parent == name and subtree:
        sub_params, sub_stats = count_parameters(model, shape, subtree, variables=variables)
        result.append(Row(key, shape, sub_params, sub_stats, published, {}))
  return result
