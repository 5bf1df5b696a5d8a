r"""Seed 000: the variational CAE (VCAE) deblurring LFW faces (Gaussian blur k=9, sigma=4).

The CAE with a Gaussian latent at the 14x14x256 bottleneck (1x1-conv heads for
the mean and log-variance, reparameterised sampling in training, the mean at
evaluation; see jax_dae/models/cae.py). Loss: pixel MSE + kl_weight * KL, the
KL summed over the latent (nats per image) and averaged over the batch.

Seed 000 does not publish its KL weight. The default here is the negative
ELBO of a Gaussian decoder with noise sigma per value, rescaled to the
per-value MSE: kl_weight = 2 sigma^2 / D with D = 112 * 112 * 3 and sigma =
0.05 (about the blurred input's RMS error), i.e. 1.33e-7. `:sigma=<float>`
or `:kl_weight=<float>` change it (the larger the weight, the blurrier the
reconstructions; seed 000's poor VCAE scores suggest a strong KL term).

Command:
  python -m jax_dae.main --config=configs/lfw_vcae.py --workdir=runs/lfw_vcae \
      --config.data.dir=../shared/data

Smoke setting (tiny model and split; about a minute on a 2-core CPU):
  python -m jax_dae.main --config=configs/lfw_vcae.py:runlocal --workdir=runs/smoke_vcae \
      --config.data.dir=../shared/data

Expected runtime: as configs/lfw_cae.py (about 1.5 minutes on one H100): 15
epochs of 952 steps at batch 8. Seed 000 reports test PSNR/SSIM 26.67 / 0.73
for the blurred input, 30.62 / 0.88 for the CAE and 22.69 / 0.54 for its VCAE
("we were not able to successfully train a VAE").
"""

from configs import default

# Values per image the pixel MSE averages over (the 112 x 112 RGB crop).
_VALUES_PER_IMAGE = 112 * 112 * 3


def get_config(arg: str | None = None):
  """``arg``: comma-separated ``sigma=<float>`` or ``kl_weight=<float>``, and/or ``runlocal``."""
  args = default.parse_arg(arg, sigma=0.05, kl_weight=None, runlocal=False)
  sigma, kl_weight = args.sigma, args.kl_weight
  config = default.get_config()
  config.model.name = "VCAE"
  # Weight of the KL term (nats per image) next to the per-value pixel MSE.
  config.loss.kl_weight = kl_weight if kl_weight is not None else 2 * sigma**2 / _VALUES_PER_IMAGE
  if args.runlocal:
    default.runlocal(config, "TinyVCAE")
  return config
