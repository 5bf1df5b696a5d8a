"""jax_dae: accelerator-first denoising autoencoders in JAX/Flax.

The library's pure pieces compose with ``jax.jit``, ``jax.shard_map``,
``jax.pmap`` and ``jax.grad`` in other JAX code:

* ``models.create(name, **kwargs)``: Flax Linen autoencoders by name.
* ``corruptions.parse(spec)``: batched corruption ``corrupt(keys, images)``.
* ``losses.create(name_or_config)``: ``loss(reconstruction, clean, aux)``.
* ``metrics``: per-image PSNR, SSIM, LPIPS.
* ``init_state``, ``make_loss_fn``, ``loss_and_grad``, ``make_train_step``,
  ``make_eval_step`` (``jax_dae.steps``): the train state, the pure loss and
  its data-parallel gradients for your own steps, and the step functions the
  command line uses; ``from_nnx`` adapts a ``flax.nnx`` module (``init_state``
  takes one directly); ``make_train_loop`` (``jax_dae.loops``): many steps in
  one compiled call.
* ``create_model(config)``, ``create_optimizer(config)``: from a config.
* ``train_and_evaluate(config, workdir)``: the whole run (``jax_dae.train``).
"""

from jax_dae import corruptions, losses, metrics, models
from jax_dae.loops import make_train_loop
from jax_dae.models import from_config as create_model
from jax_dae.optimizers import create as create_optimizer
from jax_dae.steps import (
    TrainState,
    from_nnx,
    init_state,
    loss_and_grad,
    make_eval_step,
    make_loss_fn,
    make_train_step,
)
from jax_dae.train import train_and_evaluate

__version__ = "0.1.0"

__all__ = [
    "TrainState",
    "corruptions",
    "create_model",
    "create_optimizer",
    "from_nnx",
    "init_state",
    "loss_and_grad",
    "losses",
    "make_eval_step",
    "make_loss_fn",
    "make_train_loop",
    "make_train_step",
    "metrics",
    "models",
    "train_and_evaluate",
]
