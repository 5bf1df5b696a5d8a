r"""Seed 000: the CAE deblurring LFW faces with the mixed loss rho * pixel + perceptual.

The loss of configs/lfw_cae_perceptual.py (VGG16 relu3_3 after x2 bilinear
upsampling, normalised by C H W) plus rho times the pixel MSE. Seed 000 tried
rho = 0.5 ("the perceptual loss twice as important") and rho = 1.

Command (rho = 1, the default; `:rho=0.5` for the other run):
  python -m jax_dae.main --config=configs/lfw_cae_mixed.py:rho=1 \
      --workdir=runs/lfw_cae_mixed_rho1 --config.data.dir=../shared/data
  python -m jax_dae.main --config=configs/lfw_cae_mixed.py:rho=0.5 \
      --workdir=runs/lfw_cae_mixed_rho0.5 --config.data.dir=../shared/data

Smoke setting (tiny model and split, no upsampling; a few minutes on a 2-core CPU):
  python -m jax_dae.main --config=configs/lfw_cae_mixed.py:runlocal \
      --workdir=runs/smoke_mixed --config.data.dir=../shared/data

Expected runtime: as configs/lfw_cae_perceptual.py (the pixel term is free):
15 epochs of 952 steps at batch 8, a few minutes on one H100 (estimate, not
yet measured). Seed 000 reports test PSNR/SSIM 26.67 / 0.73 for the blurred
input, 24.25 / 0.79 for the perceptual loss alone, 26.59 / 0.84 for rho = 0.5
and 27.26 / 0.86 for rho = 1.
"""

from configs import default, lfw_cae_perceptual


def get_config(arg: str | None = None):
  """``arg``: comma-separated ``rho=<float>`` and/or ``runlocal``."""
  args = default.parse_arg(arg, rho=1.0, runlocal=False)
  rho = args.rho
  config = lfw_cae_perceptual.get_config("runlocal" if args.runlocal else None)
  config.loss.name = "mixed"
  # Weight of the pixel MSE next to the perceptual term (seed 000: 0.5 or 1).
  config.loss.rho = rho
  return config
