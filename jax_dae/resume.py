"""What a rerun on an existing ``--workdir`` may change, and starting over.

A rerun resumes from the newest checkpoint. Fields that define what a step
is (data, split, batch size, seed, corruption, loss, optimizer, model) must
match the run that wrote the checkpoints, or step N would mean something else
and the result would silently mix two experiments; such a change is refused
with the fields named. Everything else may change: more epochs continue the
training, and evaluation, logging and performance settings apply from the
rerun on.

Two documented ways out: ``config.train.restart=True`` moves the old run's
outputs aside (nothing is deleted) and starts from step 0;
``config.train.allow_config_change=True`` resumes anyway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

# Config fields (dotted, under ``config.``) whose value is part of what a step means.
STEP_FIELDS = (
    "seed",
    "train.batch_size",
    "train.num_seeds",
    "train.ema_decay",
    "data.name",
    "data.variant",
    "data.resize",
    "data.crop",
    "data.split",
    "data.split_from",
    "data.split_seed",
    "data.mode",
    "data.tfds_name",
    "data.image_key",
    "corruption",
    "loss",
    "optimizer",
    "model",
)

# A run's outputs in its workdir, moved together by ``start_over``.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "samples", "results.json",
               "curves.png", "test_samples.npz", "config.json")


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      out |= _flatten(value, f"{prefix}.{key}")
    return out
  return {prefix: list(tree) if isinstance(tree, tuple) else tree}


def _get(tree: Mapping, dotted: str) -> Any:
  for key in dotted.split("."):
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def changed_step_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """``{"config.<field>": (old value, new value)}`` for step-defining fields that differ.

  Args:
    old: the previous run's ``config.json``.
    new: this run's config as a dict (``ConfigDict.to_dict()``).
  """
  changes = {}
  for field in STEP_FIELDS:
    before = _flatten(_get(old, field), f"config.{field}")
    after = _flatten(_get(new, field), f"config.{field}")
    for name in sorted(before.keys() | after.keys()):
      if before.get(name) != after.get(name):
        changes[name] = (before.get(name), after.get(name))
  return changes


def check_config_change(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a run whose step-defining fields changed.

  Call only when ``workdir`` holds checkpoints. Does nothing when there is no
  previous ``config.json`` or ``config.train.allow_config_change`` is set.

  Raises:
    ValueError: one line naming each changed field with its old and new value.
  """
  path = workdir / "config.json"
  if config.train.get("allow_config_change", False) or not path.is_file():
    return
  changes = changed_step_fields(json.loads(path.read_text()), config.to_dict())
  if changes:
    fields = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in
                       ((k, *v) for k, v in changes.items()))
    raise ValueError(
        f"--workdir={workdir} holds checkpoints of a run with another config ({fields}): a step "
        "would mean something else. Use a new --workdir, start over with "
        "--config.train.restart=True (the old run is moved aside), or resume anyway with "
        "--config.train.allow_config_change=True.")


def start_over(workdir: Path) -> Path | None:
  """Moves a previous run's outputs into ``workdir/replaced-<time>/``; returns that folder.

  Returns ``None`` when there was nothing to move.
  """
  present = [workdir / name for name in RUN_OUTPUTS if (workdir / name).exists()]
  if not present:
    return None
  target = workdir / time.strftime("replaced-%Y%m%d-%H%M%S")
  suffix = 0
  while target.exists():
    suffix += 1
    target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
  target.mkdir()
  for path in present:
    path.rename(target / path.name)
  return target
