r"""Seed 003: MNIST denoising autoencoders, depth 1/3/5 x latent 13/8/5.

Noise x + 0.5 N(0, 1) clipped to [0, 1]; MSE; Adam; 15 epochs; 80/20
train/validation split of the 60,000 training digits, the official 10,000 as
test. The seed gives neither batch size nor learning rate: 128 and 1e-3 here.

Command (one grid cell; depth in {1, 3, 5}, latent in {13, 8, 5}):
  python -m jax_dae.main --config=configs/mnist_dae.py:depth=3,latent=8 \
      --workdir=runs/mnist_d3_l8 --config.data.dir=../shared/data

Smoke setting (seconds on a 2-core CPU):
  python -m jax_dae.main --config=configs/mnist_dae.py:runlocal --workdir=runs/smoke_mnist \
      --config.data.dir=../shared/data

Expected: under a minute per cell on one GPU (48,000 images x 15 epochs of a
model of at most 58k parameters); the seed reports a test-loss grid in which
deeper and larger-latent models do better (see docs/results.md).
"""

from configs import default


def get_config(arg: str | None = None):
  """``arg``: comma-separated ``depth=<1|3|5>``, ``latent=<13|8|5>``, ``runlocal``."""
  args = default.parse_arg(arg, depth=3, latent=8, runlocal=False)
  depth, latent = args.depth, args.latent
  config = default.get_config()
  config.data.name = "mnist"
  config.data.variant = "idx"
  config.data.mode = "L"
  # 80/20 of the official training set; the official test set as test.
  config.data.split = {"test": 1.0, "train": 0.8, "val": 0.2}
  config.corruption = "gaussian_noise(sigma=0.5)"
  config.model.name = f"MnistDAE_d{depth}_l{latent}"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.train.batch_size = 128
  config.train.num_epochs = 15
  config.train.eval_batch_size = 1000
  config.train.num_samples = 12
  if args.runlocal:
    default.runlocal(config, "TinyMnistDAE", split={"test": 64, "train": 256, "val": 64},
                     batch_size=32, eval_batch_size=64)
  return config
