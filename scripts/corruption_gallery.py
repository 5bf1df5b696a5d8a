r"""Draws every corruption op on a real LFW face and an MNIST digit.

The face is ``lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg`` read
straight from the LFW archive and preprocessed as seed 000 (resize 250 -> 224,
center crop 112); the digit is the first image of the MNIST test set. Each row
is labelled with the spec string given to ``jax_dae.corruptions.parse``; where
the digit needs a different spec (28 px is not a multiple of 8), its spec is
printed under it. Every row uses the same key, so the result is reproducible.

Usage:
  python scripts/corruption_gallery.py --data_dir=../shared/data \
      --out=docs/corruption_gallery.png
"""

from __future__ import annotations

import argparse
import tarfile
import textwrap
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from jax_dae import corruptions  # noqa: E402
from jax_dae.data import mnist, preprocess  # noqa: E402

FACE_MEMBER = "lfw-deepfunneled/George_W_Bush/George_W_Bush_0001.jpg"

# (spec for the 112x112 face, spec for the 28x28 digit if it differs, note).
ENTRIES = [
    ("identity", None, "clean"),
    ("gaussian_blur(kernel=9, sigma=4)", None, "seed 000"),
    ("pixelate(block=8)", "pixelate(block=4)", "seed 000, squares of n px"),
    ("pixelate(grid=8)", None, "seed 000, n x n squares"),
    ("gaussian_noise(sigma=0.5)", None, "seed 003"),
    ("gaussian_noise(sigma=(0.05, 0.2))", None, "sigma drawn per image"),
    ("poisson", None, "seed 002, skimage peak"),
    ("poisson(peak=20)", None, "explicit peak"),
    ("speckle(var=0.02)", None, "seed 002"),
    ("salt_pepper(amount=0.3)", None, "seeds 001/002, channel-wise"),
    ("salt_pepper(amount=0.1, channelwise=False)", None, "whole pixels"),
    ("random_impulse(amount=0.2)", None, "seed 004"),
    ("masking_noise(amount=0.3)", None, "seed 004"),
    ("coarse_dropout(n=3, size=12)", None, "seed 001"),
    ("coarse_dropout(n=3, size=12) | gaussian_noise(sigma=0.1) | salt_pepper(amount=0.05)",
     None, "seed 001, all three"),
    ("choice(gaussian_noise(sigma=0.1), speckle(), poisson)", None, "one op per image"),
]


def load_face(data_dir: Path) -> np.ndarray:
  """The gallery face as float32 ``[112, 112, 3]`` in [0, 1]."""
  with tarfile.open(data_dir / "lfw-deepfunneled.tgz", "r:gz") as archive:
    data = archive.extractfile(FACE_MEMBER).read()
  image = preprocess.decode(data, mode="RGB", name=FACE_MEMBER)
  return preprocess.resize_center_crop(image, resize=224, crop=112).astype(np.float32) / 255


def load_digit(data_dir: Path, index: int = 0) -> np.ndarray:
  """MNIST test image ``index`` as float32 ``[28, 28, 1]`` in [0, 1]."""
  images = mnist.read_idx_images(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
  return images[index, :, :, None].astype(np.float32) / 255


def corrupt(spec: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
  fn = jax.jit(corruptions.parse(spec, image.shape))
  return np.asarray(fn(jax.random.split(jax.random.key(seed), 1), image[None]))[0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data", type=Path)
  parser.add_argument("--out", default="docs/corruption_gallery.png", type=Path)
  args = parser.parse_args()

  face, digit = load_face(args.data_dir), load_digit(args.data_dir)
  half = -(-len(ENTRIES) // 2)
  fig, axes = plt.subplots(
      half, 6, figsize=(13, 1.55 * half),
      gridspec_kw={"width_ratios": [2.4, 1, 1] * 2, "wspace": 0.05, "hspace": 0.08},
  )
  for i, (spec, digit_spec, note) in enumerate(ENTRIES):
    text_ax, face_ax, digit_ax = axes[i % half, 3 * (i // half): 3 * (i // half) + 3]
    face_ax.imshow(corrupt(spec, face), vmin=0, vmax=1, interpolation="nearest")
    digit_ax.imshow(corrupt(digit_spec or spec, digit)[..., 0], cmap="gray", vmin=0, vmax=1,
                    interpolation="nearest")
    label = "\n".join(textwrap.wrap(spec, 34, break_on_hyphens=False))
    if digit_spec:
      label += f"\ndigit: {digit_spec}"
    text_ax.text(1.0, 0.55, label, ha="right", va="center", family="monospace", fontsize=8.5)
    text_ax.text(1.0, 0.08, note, ha="right", va="center", fontsize=8, color="0.4",
                 style="italic")
  for ax in axes.ravel():
    ax.axis("off")
  # The image axes keep their aspect, so put the title just above the first row.
  fig.canvas.draw()
  top = max(ax.get_position().y1 for ax in axes[0])
  fig.text(0.5, top + 0.01, "jax_dae.corruptions on an LFW face (112x112) and an MNIST digit "
           "(28x28)", ha="center", va="bottom", fontsize=12)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=90, bbox_inches="tight")
  print(f"Wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB).")


if __name__ == "__main__":
  main()
