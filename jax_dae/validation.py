"""Checks a config before any data is read or anything compiles.

``validate_config(config)`` raises a one-line ``ValueError`` that names the
field, its value and what is allowed; ``fields(config)`` lists a config's
fields by dotted name (``config.train.batch_size``), for ``--list_fields`` and
for suggesting the right name when one is misspelled.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import ml_collections

from jax_dae import corruptions, data, losses, models, replicas
from jax_dae.data import pipeline

# Names accepted by config.model.dtype and config.optimizer.name; train.py maps
# them to the dtypes and optimizers.
DTYPES = models.DTYPES
OPTIMIZERS = ("adam", "adamw", "sgd")


def fields(config: ml_collections.ConfigDict, prefix: str = "config") -> dict[str, Any]:
  """Every field of ``config`` by dotted name, in the config's key order.

  Nested ConfigDicts are walked into; an empty one is a field of its own
  (value ``{}``), so that it can still be named and set.

  Args:
    config: a ConfigDict (or any mapping of mappings).
    prefix: the name of ``config`` itself.

  Returns:
    ``{"config.train.batch_size": 8, ...}``.
  """
  out = {}
  for key, value in config.items():
    name = f"{prefix}.{key}"
    if isinstance(value, ml_collections.ConfigDict | dict) and len(value):
      out.update(fields(value, name))
    else:
      out[name] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return out


def _floats(name: str, value: Any) -> Iterator[tuple[str, float]]:
  """The float values inside one field (itself, or the items of a tuple or list)."""
  if isinstance(value, bool | numbers.Integral):
    return
  if isinstance(value, numbers.Real):
    yield name, float(value)
  elif isinstance(value, tuple | list):
    for i, item in enumerate(value):
      yield from _floats(f"{name}[{i}]", item)


def _check_int(name: str, value: Any, low: int, note: str = "") -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ValueError(f"{name}={value!r} must be an integer >= {low}{note}.")


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f"{name}={value!r} must be True or False.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad names and values before any data is read or anything compiles.

  Args:
    config: an experiment config (``configs/default.py``'s fields; the
      optional ones are read with ``.get``).

  Raises:
    ValueError: one line naming the field, the value and what is allowed.
  """
  # NaN passes every comparison below (nan <= 0 is False): reject it, and the
  # infinities, first, wherever a float sits.
  for name, value in fields(config).items():
    for item_name, number in _floats(name, value):
      if not math.isfinite(number):
        raise ValueError(f"{item_name}={number} is not a finite number.")

  # Names chosen from registries.
  if config.model.name not in models.available():
    raise ValueError(f"config.model.name={config.model.name!r} is unknown; available: "
                     f"{', '.join(models.available())}.")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r} is unknown; allowed: "
                     f"{', '.join(DTYPES)}.")
  if config.loss.name not in losses.available():
    raise ValueError(f"config.loss.name={config.loss.name!r} is unknown; available: "
                     f"{', '.join(losses.available())}.")
  if config.data.name not in data.available():
    raise ValueError(f"config.data.name={config.data.name!r} is unknown; available: "
                     f"{', '.join(data.available())}.")
  try:
    corruptions.parse(config.corruption)
  except ValueError as e:
    raise ValueError(f"config.corruption={config.corruption!r}: {e}") from None
  for name, spec in config.test_corruptions.items():
    try:
      corruptions.parse(spec)
    except ValueError as e:
      raise ValueError(f"config.test_corruptions.{name}={spec!r}: {e}") from None

  _validate_optimizer(config.optimizer)
  _validate_data(config.data)
  _validate_train(config.train)
  if config.mesh.num_devices < 0:
    raise ValueError(f"config.mesh.num_devices={config.mesh.num_devices} must be >= 0 "
                     "(0 = all local devices).")


def _validate_optimizer(opt: ml_collections.ConfigDict) -> None:
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; allowed: "
                     f"{', '.join(OPTIMIZERS)}.")
  if not opt.learning_rate > 0:
    raise ValueError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}.")
  if not opt.get("weight_decay", 0.0) >= 0:
    raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {opt.weight_decay}.")
  if not opt.get("momentum", 0.0) >= 0:
    raise ValueError(f"config.optimizer.momentum must be >= 0 (0 = none), got {opt.momentum}.")
  decay_rate = opt.get("decay_rate", 1.0)
  if not 0 < decay_rate <= 1:
    raise ValueError(f"config.optimizer.decay_rate must be in (0, 1] (1 = no decay), got "
                     f"{decay_rate}.")
  if decay_rate < 1:  # decay_steps is read only when the rate decays.
    _check_int("config.optimizer.decay_steps", opt.get("decay_steps"), 1)


def _validate_data(cfg: ml_collections.ConfigDict) -> None:
  placement = cfg.get("placement", "auto")
  if placement not in pipeline.PLACEMENTS:
    raise ValueError(f"config.data.placement={placement!r} is unknown; allowed: "
                     f"{', '.join(pipeline.PLACEMENTS)}.")
  fraction = cfg.get("device_memory_fraction", 0.5)
  if not 0 < fraction <= 1:
    raise ValueError(f"config.data.device_memory_fraction={fraction} must be in (0, 1].")
  _check_int("config.data.prefetch", cfg.get("prefetch", 2), 1)
  for key in ("resize", "crop"):
    if key in cfg:
      _check_int(f"config.data.{key}", cfg[key], 1)
  for split, size in cfg.split.items():
    if isinstance(size, bool) or not isinstance(size, numbers.Real) or size <= 0:
      raise ValueError(f"config.data.split.{split}={size!r} must be a count >= 1 or a fraction "
                       "in (0, 1].")


def _validate_train(cfg: ml_collections.ConfigDict) -> None:
  for key in ("batch_size", "num_epochs", "steps_per_call", "eval_batch_size",
              "max_checkpoints"):
    _check_int(f"config.train.{key}", cfg[key], 1)
  _check_int("config.train.num_samples", cfg.num_samples, 0)
  if cfg.get("bn_stats", "running") not in ("running", "recomputed"):
    raise ValueError(f"config.train.bn_stats={cfg.bn_stats!r} is unknown; allowed: 'running', "
                     "'recomputed'.")
  if "bn_stats_images" in cfg:
    _check_int("config.train.bn_stats_images", cfg.bn_stats_images, cfg.batch_size,
               " (config.train.batch_size at least)")
  if cfg.get("seeds_form", "vmap") not in replicas.FORMS:
    raise ValueError(f"config.train.seeds_form={cfg.seeds_form!r} is unknown; allowed: "
                     f"{', '.join(map(repr, replicas.FORMS))}.")
  ema = cfg.get("ema_decay", 0.0)
  if isinstance(ema, bool) or not isinstance(ema, numbers.Real) or not 0 <= ema < 1:
    raise ValueError(f"config.train.ema_decay={ema!r} must be in [0, 1) (0: no average).")
  if ema and cfg.get("bn_stats", "running") == "running":
    raise ValueError("config.train.ema_decay needs config.train.bn_stats='recomputed': running "
                     "BatchNorm statistics belong to the trained weights, not to their average.")
  if "num_seeds" in cfg:
    _check_int("config.train.num_seeds", cfg.num_seeds, 1, " (replicas trained together)")
  _check_int("config.train.patience", cfg.patience, 0, " (0 = no early stopping)")
  for epoch in cfg.test_epochs:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= cfg.num_epochs:
      raise ValueError(f"config.train.test_epochs={tuple(cfg.test_epochs)!r}: each must be an "
                       f"epoch number from 1 to {cfg.num_epochs}.")
  # Fields that may be absent from older configs.
  if (seconds := cfg.get("seconds_per_call")) is not None and not seconds > 0:
    raise ValueError(f"config.train.seconds_per_call={seconds} must be > 0.")
  if (every := cfg.get("checkpoint_every_s")) is not None and not every >= 0:
    raise ValueError(f"config.train.checkpoint_every_s={every} must be >= 0 (0 = only at the "
                     "end of each epoch).")
  for key in ("restart", "allow_config_change"):
    if key in cfg:
      _check_bool(f"config.train.{key}", cfg[key])
