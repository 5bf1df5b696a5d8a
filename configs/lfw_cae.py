r"""Seed 000: the CAE deblurring LFW faces (Gaussian blur, kernel 9, sigma 4).

Command:
  python -m jax_dae.main --config=configs/lfw_cae.py --workdir=runs/lfw_cae \
      --config.data.dir=../shared/data

Smoke setting (about a minute on a 2-core CPU):
  python -m jax_dae.main --config=configs/lfw_cae.py:runlocal --workdir=runs/smoke \
      --config.data.dir=../shared/data

Expected: 15 epochs of 952 steps at batch 8. Seed 000 reports test PSNR/SSIM
26.67 / 0.73 for the blurred input and 30.62 / 0.88 for the CAE; see
docs/results.md for what this library measured and how long it took.
"""

from configs import default


def get_config(arg: str | None = None):
  args = default.parse_arg(arg, runlocal=False)
  config = default.get_config()
  if args.runlocal:
    default.runlocal(config, "TinyCAE")
  return config
