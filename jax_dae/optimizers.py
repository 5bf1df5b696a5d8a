"""Optimizers from the config: Adam with coupled L2, AdamW, SGD; exponential decay."""

from __future__ import annotations

import ml_collections
import optax


def create(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
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
