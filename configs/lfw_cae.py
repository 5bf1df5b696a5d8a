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
  config = default.get_config()
  if arg == "runlocal":
    config.model.name = "TinyCAE"
    config.data.split = {"test": 64, "val": 32, "train": 128}
    config.train.num_epochs = 2
    config.train.batch_size = 8
    config.train.eval_batch_size = 32
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; allowed: runlocal.")
  return config
