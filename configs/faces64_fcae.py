r"""Seed 001: the Graz fully convolutional autoencoder on 64x64 faces.

As configs/faces64_dense_ae.py (LFW for AFHQ, the same distortions), with the
fully convolutional model (encoder 32/48/64, decoder 32/16/8, 1x1 output conv)
and the seed's exponential learning-rate decay (rate and period are not
published: x0.9 per epoch here).

Command:
  python -m jax_dae.main --config=configs/faces64_fcae.py:distortion=all \
      --workdir=runs/faces64_fcae_all --config.data.dir=../shared/data
Smoke setting: `:runlocal`.
"""

from configs import faces64_dense_ae


def get_config(arg: str | None = None):
  config = faces64_dense_ae.get_config(arg)
  if "bottleneck" in config.model:
    raise ValueError("faces64_fcae has no dense bottleneck: drop bottleneck= from the argument.")
  config.model.name = "TinyGrazFCAE" if config.model.name == "TinyGrazAE" else "GrazFCAE"
  config.optimizer.decay_rate = 0.9
  # One epoch of the default split (13,233 x 0.64 / 32 steps).
  config.optimizer.decay_steps = 264
  return config
