r"""Seed 001: the Graz dense-bottleneck autoencoder on 64x64 faces.

AFHQ (cats and dogs) is not available offline: LFW's whole 250x250 frame
resized to 64x64 RGB stands in for it. CCP encoder (32/64/128 filters, BN),
dense bottleneck (1000 units: the seed's final model), decoder type 1, sigmoid
output; MSE, Adam 1e-3. As the seed, at most 50 epochs with early stopping
(patience 3 epochs, on validation PSNR here, on validation loss there); the
final model is tested (results.json `test`), the best-validation checkpoint too
(`test_at_best_val`).

Distortions (`:distortion=...`): gaussian (Albumentations' GaussNoise defaults,
a reconstruction: the seed gives no values), dropout (three 12x12 black
squares), salt_pepper (channel-wise), any of them joined by "+" (applied in
the order gaussian, dropout, salt_pepper), all (the three), or none (the clean
image in, as the seed's bottleneck sweep).

Command:
  python -m jax_dae.main --config=configs/faces64_dense_ae.py:distortion=all \
      --workdir=runs/faces64_dense_all --config.data.dir=../shared/data
Bottleneck size (the seed's sweep): `:distortion=none,bottleneck=512`. Other
decoders: --config.model.name=GrazAE_net2 (bottleneck 4096).

Smoke setting: `:runlocal` (tiny model, 64 images; under a minute on a CPU).
Expected: a few minutes on one GPU; the seed's seven-row test-MSE table is in
docs/results.md when run.
"""

from configs import default

DISTORTIONS = {
    "gaussian": "maybe(gaussian_noise(var=(0.000154, 0.000769)), p=0.5)",
    "dropout": "coarse_dropout(n=3, size=12)",
    "salt_pepper": "salt_pepper(amount=0.05, channelwise=True)",
}


def corruption(distortion: str) -> str:
  """The corruption spec of ``"all"``, ``"none"`` or names of DISTORTIONS joined by "+"."""
  if distortion == "none":
    return "identity"
  names = list(DISTORTIONS) if distortion == "all" else distortion.split("+")
  unknown = [n for n in names if n not in DISTORTIONS]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f"distortion={distortion!r}; allowed: {', '.join(DISTORTIONS)} joined by "
                     "'+', all, none.")
  return " | ".join(DISTORTIONS[n] for n in DISTORTIONS if n in names)


def get_config(arg: str | None = None):
  """``arg``: comma-separated ``distortion=<name>``, ``bottleneck=<units>``, ``runlocal``."""
  # bottleneck=0 keeps the model's own (1000 for GrazAE, 4096 for GrazAE_net1..3).
  args = default.parse_arg(arg, distortion="all", bottleneck=0, runlocal=False)
  config = default.get_config()
  config.data.resize = config.data.crop = 64  # whole frame, no crop
  config.data.split = {"test": 0.2, "train": 0.64, "val": 0.16}
  config.corruption = corruption(args.distortion)
  config.model.name = "GrazAE"
  if args.bottleneck:
    config.model.bottleneck = args.bottleneck
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.train.batch_size = 32
  config.train.num_epochs = 50
  config.train.patience = 3
  config.train.num_samples = 12
  if args.runlocal:
    default.runlocal(config, "TinyGrazAE", split={"test": 16, "train": 64, "val": 16},
                     batch_size=16, eval_batch_size=16)
  return config
