"""Many seeds in one compiled program: replicas of a run on a leading array axis.

``config.train.num_seeds = N`` trains N independent replicas of a run in
one program. Replica ``k`` is the run of ``--config.seed=seed + k``: its
initialisation, data order, training corruption and evaluation corruption
come from ``run_keys(seed + k)``, exactly as that run's do, so replica ``k``
of an N-seed run computes what the separate run computes
(``tests/test_replicas.py``). Every leaf of the train state, every key and
every metric gets a leading axis of size N; the step, the loop and the
evaluation are ``jax.vmap``-ed over it, so the replicas share each compiled
kernel (a batch-8 step leaves a GPU mostly idle: N replicas cost far less
than N runs).

With ``num_seeds = 1`` nothing has a replica axis: the state, checkpoints
and metrics are those of a plain run.

What is chosen for all replicas together (and documented where it is used):
the best checkpoint and early stopping follow the replicas' *mean*
validation PSNR; ``results.json`` reports every replica, their mean, std
(``ddof=1``), min and max.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMS = ("vmap", "unrolled")


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """A run's keys: (init, data order, training corruption, evaluation corruption)."""
  init_key, data_key, step_key, eval_key = jax.random.split(jax.random.key(seed), 4)
  return init_key, data_key, step_key, eval_key


@dataclasses.dataclass(frozen=True)
class Replicas:
  """N replicas of a run from ``seed``: their keys, and functions mapped over them.

  Attributes:
    seed: the first replica's seed (``config.seed``).
    num: the number of replicas (``config.train.num_seeds``).
    form: how a function runs over the replicas (``config.train.seeds_form``):
      ``"vmap"`` (one vectorised computation: a convolution whose weights
      differ per replica becomes a grouped convolution) or ``"unrolled"``
      (the function traced once per replica in the same program: plain
      convolutions, N times the kernels and the compile time). Both compute
      the same values.
  """

  seed: int
  num: int = 1
  form: str = "vmap"

  def __post_init__(self):
    if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 1:
      raise ValueError(f"num_seeds must be a positive integer, got {self.num!r}.")
    if self.form not in FORMS:
      raise ValueError(f"seeds_form={self.form!r} is unknown; allowed: {', '.join(FORMS)}.")

  @property
  def stacked(self) -> bool:
    """Whether arrays carry a leading replica axis (``num > 1``)."""
    return self.num > 1

  @property
  def seeds(self) -> list[int]:
    """Replica ``k``'s seed is ``seed + k``."""
    return [self.seed + k for k in range(self.num)]

  def keys(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``run_keys`` of every replica, each stacked to ``[N]`` (unstacked for one)."""
    if not self.stacked:
      return run_keys(self.seed)
    per_replica = [run_keys(s) for s in self.seeds]
    return tuple(jnp.stack(keys) for keys in zip(*per_replica, strict=True))

  def map(self, fn: Callable, in_axes: Any = 0) -> Callable:
    """``fn`` mapped over the replica axis (``jax.vmap``); ``fn`` itself for one replica.

    ``in_axes`` as for ``jax.vmap``: ``0`` for per-replica arguments (state,
    keys), ``None`` for shared ones (the images).
    """
    if not self.stacked:
      return fn
    if self.form == "vmap":
      return jax.vmap(fn, in_axes=in_axes)
    return self._unrolled(fn, in_axes)

  def _unrolled(self, fn: Callable, in_axes: Any) -> Callable:
    """``fn`` applied to each replica's slice in turn, the results stacked."""

    def mapped(*args):
      axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
      outs = [fn(*(a if ax is None else jax.tree.map(lambda x, k=k: x[k], a)
                   for a, ax in zip(args, axes, strict=True)))
              for k in range(self.num)]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return mapped

  def take(self, tree: Any, k: int) -> Any:
    """Replica ``k`` of a stacked tree (the tree itself for one replica)."""
    if not self.stacked:
      if k != 0:
        raise IndexError(f"replica {k} of a run with one replica.")
      return tree
    if not 0 <= k < self.num:
      raise IndexError(f"replica {k} of a run with {self.num} replicas (0..{self.num - 1}).")
    return jax.tree.map(lambda x: x[k], tree)

  def per_replica(self, value: Any) -> np.ndarray:
    """A metric as ``[N]`` floats on the host, whether or not it has a replica axis."""
    value = np.asarray(jax.device_get(value), np.float64)
    return value.reshape(self.num) if value.ndim <= 1 else value

  def rows(self, values: Any) -> np.ndarray:
    """Per-step metrics ``[steps]`` or ``[steps, N]`` as ``[steps, N]`` on the host."""
    values = np.asarray(jax.device_get(values))
    return values.reshape(len(values), self.num)


# One replica: nothing gets a replica axis and ``map`` returns the function itself.
SINGLE = Replicas(seed=0)


def step_of(state: Any) -> int:
  """The step of a train state, stacked or not (replicas step together)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def spread(values: Sequence[float]) -> dict[str, float]:
  """``{"mean", "std", "min", "max", "n"}`` of per-replica values (std with ``ddof=1``)."""
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "std": std, "min": float(np.min(values)),
          "max": float(np.max(values)), "n": len(values)}


def split_metrics(metrics: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
  """``{name: [N]}`` to ``[{name: value}]``, one dict per replica."""
  num = len(next(iter(metrics.values())))
  return [{k: float(v[i]) for k, v in metrics.items()} for i in range(num)]


def best_replica(rows: Sequence[Mapping[str, Any]], step: int, num: int) -> int:
  """The replica with the highest validation PSNR at ``step`` (or the last evaluation before).

  Args:
    rows: ``metrics.jsonl``'s rows (a resumed run's later rows win).
    step: the step of the checkpoint in question.
    num: the number of replicas.

  Returns:
    The replica's index; 0 for one replica or when no evaluation is recorded.
  """
  if num == 1:
    return 0
  keys = [f"val/psnr/r{k}" for k in range(num)]
  evaluated = {int(r["step"]): r for r in rows if r.get("step", step + 1) <= step
               and all(key in r for key in keys)}
  if not evaluated:
    return 0
  row = evaluated[max(evaluated)]
  return int(np.argmax([row[key] for key in keys]))


__all__ = ["FORMS", "SINGLE", "Replicas", "best_replica", "run_keys", "split_metrics", "spread",
           "step_of"]
