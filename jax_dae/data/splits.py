"""Seeded splits, shared by every source.

``config.data.split`` is an ordered mapping ``{split: size}``. A size is a
count (``int``) or a fraction of the source split it is cut from (``float`` in
``(0, 1]``, rounded down). ``config.data.split_from`` says which split of the
source (its "pool") each output split is cut from; output splits that share a
pool are cut, in config order, from one permutation of that pool seeded by
``config.data.split_seed``, so they never overlap. Sources without splits of
their own (LFW, a flat image folder) have the single pool ``"all"``.

Examples (MNIST, seed 003):
  ``split={"train": 0.8, "val": 0.2, "test": 1.0}`` with
  ``split_from={"train": "train", "val": "train", "test": "test"}`` gives
  48,000 / 12,000 images of the official training set and the 10,000 official
  test images.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Other names a source may give the validation split.
_ALIASES = {"val": ("val", "validation", "valid"), "validation": ("validation", "val", "valid")}


def split_indices(num_images: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
  """Deterministic random split: one permutation, cut in config order.

  Sizes that do not cover the whole pool take a random subset of it (the
  smoke settings do this). Indices of each part are sorted.

  Args:
    num_images: size of the pool.
    sizes: ``{split: count}`` in the order the parts are cut.
    seed: seed of the permutation (``numpy.random.default_rng``).

  Returns:
    ``{split: sorted int64 indices into the pool}``.
  """
  if any(n < 0 for n in sizes.values()):
    raise ValueError(f"config.data.split sizes must be >= 0, got {dict(sizes)}.")
  if sum(sizes.values()) > num_images:
    raise ValueError(
        f"config.data.split asks for {sum(sizes.values())} images but the source has "
        f"{num_images}."
    )
  order = np.random.default_rng(seed).permutation(num_images)
  out, start = {}, 0
  for split, n in sizes.items():
    out[split] = np.sort(order[start : start + n])
    start += n
  return out


def count(size: int | float, pool_size: int, *, split: str) -> int:
  """Turns a size from ``config.data.split`` into a number of images.

  Args:
    size: a count (int) or a fraction in (0, 1] of the pool (float).
    pool_size: number of images in the pool.
    split: the output split's name, for error messages.

  Returns:
    The number of images.
  """
  if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
    raise ValueError(
        f"config.data.split.{split}={size!r}: give a count (int) or a fraction (float)."
    )
  if isinstance(size, (float, np.floating)):
    if not 0.0 < size <= 1.0:
      raise ValueError(
          f"config.data.split.{split}={size}: a fraction must be in (0, 1]; give a count as an int."
      )
    return int(size * pool_size + 1e-9)
  return int(size)


def default_split_from(splits: Mapping, pools: list[str]) -> dict[str, str]:
  """Maps each output split to the pool of the same name, else to the first pool.

  ``val`` also matches a pool named ``validation`` or ``valid``. With a single
  pool every output split is cut from it.
  """
  out = {}
  for split in splits:
    match = [p for p in _ALIASES.get(split, (split,)) if p in pools]
    out[split] = match[0] if match else ("train" if "train" in pools else pools[0])
  return out


def resolve(
    pool_sizes: Mapping[str, int],
    split: Mapping[str, int | float],
    split_from: Mapping[str, str] | None,
    seed: int,
) -> dict[str, tuple[str, np.ndarray]]:
  """Assigns every output split its pool and sorted indices into that pool.

  Args:
    pool_sizes: ``{pool: number of images}`` of the source.
    split: ``config.data.split`` (ordered ``{split: count or fraction}``).
    split_from: ``config.data.split_from`` (``{split: pool}``); ``None`` or
      missing entries use ``default_split_from``.
    seed: ``config.data.split_seed``.

  Returns:
    ``{split: (pool, indices)}`` in the order of ``split``.
  """
  split = dict(split)
  if not split:
    raise ValueError("config.data.split is empty: name at least one split and its size.")
  pools = list(pool_sizes)
  mapping = default_split_from(split, pools) | dict(split_from or {})
  for name in split:
    if mapping[name] not in pool_sizes:
      raise ValueError(
          f"config.data.split_from.{name}={mapping[name]!r} is not a split of this source; "
          f"it has: {', '.join(pools)}."
      )
  out: dict[str, tuple[str, np.ndarray]] = {}
  for pool in pools:
    names = [s for s in split if mapping[s] == pool]
    if not names:
      continue
    sizes = {s: count(split[s], pool_sizes[pool], split=s) for s in names}
    try:
      parts = split_indices(pool_sizes[pool], sizes, seed)
    except ValueError as e:
      raise ValueError(f"{e} (source split {pool!r})") from None
    out.update({s: (pool, idx) for s, idx in parts.items()})
  return {s: out[s] for s in split}
