"""Pictures: sample grids and training curves."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from jax_dae import writers


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
  """Writes a PIL image as PNG atomically."""
  with writers.atomic_file(path, "wb") as f:
    image.save(f, format="PNG")


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[0, 1] floats to uint8 with rounding."""
  return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Tiles rows of ``[N, H, W, C]`` uint8 images into one white-padded ``[h, w, C]`` image."""
  n, h, w, c = rows[0].shape
  grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, np.uint8)
  for r, images in enumerate(rows):
    for i, image in enumerate(images):
      y, x = pad + r * (h + pad), pad + i * (w + pad)
      grid[y:y + h, x:x + w] = image
  return grid


def save_sample_grid(path: str | os.PathLike, corrupted: np.ndarray, reconstructed: np.ndarray,
                     clean: np.ndarray, pad: int = 2) -> None:
  """Writes a PNG with one column per example and rows corrupted | reconstructed | clean."""
  grid = image_grid([to_uint8(x) for x in (corrupted, reconstructed, clean)], pad)
  save_png(Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid), Path(path))


def prepare() -> None:
  """Imports Matplotlib with the Agg backend (about a second), e.g. on a background thread."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot  # noqa: F401


@contextlib.contextmanager
def figure(path: str | os.PathLike, *, ncols: int = 1, figsize=(5, 3.2), dpi: int = 110):
  """Yields ``(fig, axes)`` of a new Matplotlib figure, then writes it to ``path`` atomically.

  ``axes`` is one ``Axes`` for ``ncols=1``, else an array of them.
  """
  prepare()
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, ncols, figsize=figsize, dpi=dpi)
  try:
    yield fig, axes
    fig.tight_layout()
    with writers.atomic_file(path, "wb") as f:
      fig.savefig(f, format="png", bbox_inches="tight")  # no label cut at the edges
  finally:
    plt.close(fig)


def save_curves(metrics_path: str | os.PathLike, path: str | os.PathLike) -> None:
  """Plots the training loss and validation PSNR/SSIM from metrics.jsonl.

  A run of several seeds (``val/psnr/r0``, ``val/psnr/r1``, ...) is drawn as
  the replicas' mean with a band from their minimum to their maximum.
  """
  # A resumed run rewrites the steps after its checkpoint: keep each step's last row.
  # Rows are keyed by step and by what they hold (train, val, test...).
  latest: dict[tuple[int, tuple[str, ...]], dict] = {}
  for r in writers.read_jsonl(metrics_path):
    latest[(r["step"], tuple(sorted({k.split("/")[0] for k in r if "/" in k})))] = r
  rows = [latest[k] for k in sorted(latest)]

  def series(name):
    """(steps, mean, low, high) of ``name`` over the rows that have it; low/high: replicas."""
    have = [r for r in rows if name in r]
    steps = np.array([r["step"] for r in have])
    mean = np.array([r[name] for r in have])
    per_replica = [[v for k, v in r.items() if k.startswith(f"{name}/r")] for r in have]
    if have and all(per_replica):
      return steps, mean, np.array([min(v) for v in per_replica]), np.array(
          [max(v) for v in per_replica])
    return steps, mean, None, None

  def draw(ax, name, style, **kwargs):
    steps, mean, low, high = series(name)
    if not len(steps):
      return
    line, = ax.plot(steps, mean, style, **kwargs)
    if low is not None:
      ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)

  with figure(path, ncols=3, figsize=(14, 3.8)) as (_, axes):
    draw(axes[0], "train/loss", "-", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set(title="training loss", xlabel="step")
    draw(axes[1], "val/psnr", "o-", label="model")
    draw(axes[1], "val/input_psnr", "--", color="gray", label="corrupted input")
    if any("val/psnr" in r for r in rows):
      axes[1].legend()
    draw(axes[2], "val/ssim", "o-")
    axes[1].set(title="validation PSNR (dB)", xlabel="step")
    axes[2].set(title="validation SSIM", xlabel="step")
    for ax in axes:
      ax.grid(alpha=0.3)
