r"""Writes tests/data/vgg16_golden.npz: VGG16 features and LPIPS computed by PyTorch.

An independent reference for ``jax_dae.models.vgg`` and ``jax_dae.metrics.lpips``
on the same weights: the network is written here with ``torch.nn.functional``
(conv2d, relu, max_pool2d; weights converted HWIO -> OIHW), evaluated in
float64, and LPIPS follows its published definition in its own input
convention ([-1, 1] images through the ScalingLayer shift/scale), not this
library's [0, 1] + ImageNet mean/std, so the test also checks that the two
conventions agree. The tests then need no torch.

  pip install torch==2.13.0   # CPU is enough
  python scripts/make_vgg_golden.py [--out tests/data/vgg16_golden.npz]

Inputs (stored in the file): image 0 is scikit-image's "astronaut" averaged
down to 32x32, image 1 a fixed uniform-noise image, image 2 image 0 blurred;
features are taken for images 0 and 1, and for one 20x28 noise image whose
sizes pool unevenly (20x28 -> 10x14 -> 5x7 -> 2x3 -> 1x1), under "odd_<tap>".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jax_dae.models import vgg

# LPIPS v0.1 ScalingLayer (inputs in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision's ImageNet normalisation of [0, 1] inputs.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# VGG16 (configuration D): convolutions per block; the tap after each block.
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def _inputs() -> np.ndarray:
  from skimage import data  # Test dependency; only this script needs it.

  astronaut = data.astronaut().astype(np.float64) / 255.0  # 512 x 512 x 3
  small = astronaut.reshape(32, 16, 32, 16, 3).mean(axis=(1, 3))
  noise = np.random.default_rng(20240601).uniform(size=(32, 32, 3))
  # Separable [1, 2, 1] / 4 blur with edge replication.
  padded = np.pad(small, ((1, 1), (1, 1), (0, 0)), mode="edge")
  rows = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
  blurred = (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4
  return np.stack([small, noise, blurred]).astype(np.float32)


def torch_features(images: np.ndarray, raw: dict) -> dict[str, torch.Tensor]:
  """VGG16 taps (NCHW, float64) of [B, H, W, 3] images in [0, 1], ImageNet-normalised."""
  x = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2)
  mean = torch.tensor(_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
  std = torch.tensor(_STD, dtype=torch.float64).view(1, 3, 1, 1)
  return _torch_trunk((x - mean) / std, raw)


def _torch_trunk(x: torch.Tensor, raw: dict) -> dict[str, torch.Tensor]:
  """VGG16 configuration D on NCHW float64, from the raw checkpoint's ``Conv_i`` in order."""
  out = {}
  conv = 0
  for block, (num_convs, tap) in enumerate(zip(_CONVS_PER_BLOCK, _TAPS, strict=True)):
    if block:
      x = F.max_pool2d(x, kernel_size=2, stride=2)
    for _ in range(num_convs):
      layer = raw["VGG16_0"][f"Conv_{conv}"]
      # HWIO (flax) -> OIHW (torch); both compute cross-correlations, so no flip.
      kernel = torch.from_numpy(layer["kernel"].astype(np.float64)).permute(3, 2, 0, 1)
      bias = torch.from_numpy(layer["bias"].astype(np.float64))
      x = F.relu(F.conv2d(x, kernel, bias, stride=1, padding=1))
      conv += 1
    out[tap] = x
  return out


def torch_lpips(a: np.ndarray, b: np.ndarray, raw: dict) -> np.ndarray:
  """LPIPS (VGG, v0.1 heads) per image pair, from [0, 1] images, the LPIPS way."""
  shift = torch.tensor(_LPIPS_SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
  scale = torch.tensor(_LPIPS_SCALE, dtype=torch.float64).view(1, 3, 1, 1)

  def feats(images):
    x = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2) * 2 - 1
    return _torch_trunk((x - shift) / scale, raw)

  fa, fb = feats(a), feats(b)
  total = 0
  for j, layer in enumerate(_TAPS):
    na = fa[layer] / (fa[layer].pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
    nb = fb[layer] / (fb[layer].pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
    head = torch.from_numpy(raw[f"NetLinLayer_{j}"]["Conv_0"]["kernel"].astype(np.float64))
    head = head.reshape(1, -1, 1, 1)
    total = total + F.conv2d((na - nb) ** 2, head).mean(dim=(2, 3))
  return total.view(-1).numpy()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"
                                           / "vgg16_golden.npz"))
  args = parser.parse_args()
  # The package's pickle, read with the numpy-only unpickler (not jax_dae's conversion).
  raw = vgg.read_checkpoint(vgg.package_checkpoint_path())
  images = _inputs()
  feats = torch_features(images[:2], raw)
  pairs_a, pairs_b = images[[0, 0, 1]], images[[1, 2, 2]]
  arrays = {"images": images, "torch_version": np.array(torch.__version__),
            "lpips_pairs": np.array([[0, 1], [0, 2], [1, 2]]),
            "lpips": torch_lpips(pairs_a, pairs_b, raw).astype(np.float64)}
  for layer, value in feats.items():
    arrays[layer] = value.permute(0, 2, 3, 1).numpy().astype(np.float32)  # NHWC
  odd = np.random.default_rng(7).uniform(size=(1, 20, 28, 3)).astype(np.float32)
  arrays["odd_images"] = odd
  for layer, value in torch_features(odd, raw).items():
    arrays[f"odd_{layer}"] = value.permute(0, 2, 3, 1).numpy().astype(np.float32)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, **arrays)
  print(f"Wrote {out} ({out.stat().st_size / 1024:.0f} KiB); LPIPS {arrays['lpips']}")


if __name__ == "__main__":
  main()
