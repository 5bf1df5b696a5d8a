r"""Seed 000: the residual CAE (ResCAE) deblurring LFW faces (Gaussian blur k=9, sigma=4).

The CAE of configs/lfw_cae.py with 3 residual blocks (conv3x3-BN-ReLU-conv3x3-BN
plus identity) at the 14x14x256 bottleneck; everything else is seed 000's
setting (Adam 5e-4, L2 1e-5, batch 8, 15 epochs, pixel MSE).

Command:
  python -m jax_dae.main --config=configs/lfw_rescae.py --workdir=runs/lfw_rescae \
      --config.data.dir=../shared/data

Smoke setting (configs/default.smoke with SmallResCAE: 32x32 faces, 2048 images,
4 epochs; 3.5 minutes on the loaded 2-core CPU, test PSNR 23.46 dB against the
blurred input's 20.16):
  python -m jax_dae.main --config=configs/lfw_rescae.py:runlocal --workdir=runs/smoke_rescae \
      --config.data.dir=../shared/data

Expected runtime: 15 epochs of 952 steps at batch 8; somewhat slower than
lfw_cae.py (about 1.5 minutes on one H100), the residual blocks run at 14x14.
Seed 000 reports test PSNR/SSIM 26.67 / 0.73 for the blurred input, 30.62 /
0.88 for the CAE and 29.43 / 0.84 for the ResCAE.
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  # CAE with 3 residual blocks at the bottleneck.
  config.model.name = "ResCAE"
  if default.parse_arg(arg, runlocal=False).runlocal:
    default.smoke(config, "SmallResCAE")
  return config
