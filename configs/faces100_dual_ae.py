r"""Seed 002: single, dual and dual-with-skips autoencoders on 100x100 gray faces.

IMDB-WIKI is not available offline: LFW's whole frame resized to 100x100
grayscale stands in for it. Sigmoid output, binary cross-entropy, Adam 1e-3,
batch 128, 40 epochs. Each image gets one noise type, with its amount drawn
from a range (the seed does not publish the ranges; these are stated
choices): Gaussian, Poisson, speckle (variance 0.02) or impulse (~30%).

Command (`:model=` one of SingleAE, DualAE, DualSkipAE, each also with _sep
for depthwise-separable convolutions):
  python -m jax_dae.main --config=configs/faces100_dual_ae.py:model=DualSkipAE \
      --workdir=runs/faces100_dualskip --config.data.dir=../shared/data
The test split is also evaluated under each noise alone (results.json
"test_by_corruption", the seed's per-noise table).

Smoke setting: `:runlocal`.
Expected: a few minutes on one GPU; the seed's per-noise PSNR/SSIM table and
parameter counts are in docs/results.md and docs/models.md.
"""

from configs import default

# The seed's four noise types (its table's names); each training image gets one.
NOISES = {
    "gaussian": "gaussian_noise(var=(0.001, 0.01))",
    "impulse": "salt_pepper(amount=(0.2, 0.35))",
    "speckle": "speckle(var=0.02)",
    "poisson": "poisson(peak=(30.0, 255.0))",
}


def get_config(arg: str | None = None):
  """``arg``: comma-separated ``model=<name>`` and/or ``runlocal``."""
  args = default.parse_arg(arg, model="DualSkipAE", runlocal=False)
  model = args.model
  config = default.get_config()
  config.data.mode = "L"
  config.data.resize = config.data.crop = 100  # whole frame, no crop
  config.data.split = {"test": 0.2, "train": 0.64, "val": 0.16}
  config.corruption = f"choice({', '.join(NOISES.values())})"
  config.test_corruptions = NOISES  # the seed's per-noise table
  config.model.name = model
  config.loss.name = "bce"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.train.batch_size = 128
  config.train.num_epochs = 40
  config.train.num_samples = 12
  if args.runlocal:
    default.runlocal(config, "TinyDualSkipAE", split={"test": 16, "train": 64, "val": 16},
                     batch_size=16, eval_batch_size=16)
  return config
