r"""Seed 000: the CAE deblurring LFW faces (Gaussian blur, kernel 9, sigma 4).

Command:
  python -m jax_dae.main --config=configs/lfw_cae.py --workdir=runs/lfw_cae \
      --config.data.dir=../shared/data

Smoke setting (a few minutes on a 2-core CPU): the same task on 32x32 faces
(resize 64, centre crop 32) with SmallCAE, 2048 training images, 4 epochs at
batch 8 and learning rate 2e-3. It shows denoising working: the test PSNR ends
about 3.5 dB above the blurred input's (23.8 against 20.2 dB) and the faces in
samples/test.png are recognisable; it says nothing about the full model's
numbers.
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
    default.smoke(config, "SmallCAE")
  return config
