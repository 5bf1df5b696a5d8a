r"""Validation PSNR per epoch of multi-seed runs side by side: each replica, and their mean.

  python scripts/plot_seeds.py docs/runs/seeds/seeds4 docs/runs/seeds/seeds4_recomputed \
      --labels "running statistics" "recomputed statistics" --out docs/images/seeds_bn_stats.png

Each folder holds a run's ``metrics.jsonl``; also prints, per run, the largest
epoch-to-epoch drop of each replica after epoch 3 and how many exceed 1 dB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_dae import plots, writers  # noqa: E402


def val_psnr(run: Path) -> np.ndarray:
  """``[epochs, replicas]`` validation PSNR (the last row of each epoch wins)."""
  rows = {}
  for r in writers.read_jsonl(run / "metrics.jsonl"):
    if "val/psnr" in r and "epoch" in r:
      rows[int(r["epoch"])] = r
  keys = sorted((k for k in rows[min(rows)] if k.startswith("val/psnr/r")),
                key=lambda k: int(k.rsplit("r", 1)[1])) or ["val/psnr"]
  return np.array([[rows[e][k] for k in keys] for e in sorted(rows)])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("runs", nargs="+", type=Path)
  p.add_argument("--labels", nargs="+")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  labels = args.labels or [r.name for r in args.runs]
  curves = [val_psnr(r) for r in args.runs]
  with plots.figure(args.out, ncols=len(curves), figsize=(5.5 * len(curves), 3.8)) as (_, axes):
    axes = np.atleast_1d(axes)
    low = min(c.min() for c in curves) - 0.5
    high = max(c.max() for c in curves) + 0.5
    for ax, psnr, label in zip(axes, curves, labels, strict=True):
      epochs = np.arange(1, len(psnr) + 1)
      for k in range(psnr.shape[1]):
        ax.plot(epochs, psnr[:, k], "-", lw=0.9, alpha=0.7, label=f"replica {k}")
      ax.plot(epochs, psnr.mean(axis=1), "k-o", lw=2, ms=3, label="mean")
      ax.set(title=label, xlabel="epoch", ylabel="validation PSNR (dB)", ylim=(low, high))
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, loc="lower right")
      drops = np.diff(psnr, axis=0)[2:]  # epochs 4 on, each against the epoch before
      print(f"{label}: worst drop per replica after epoch 3 {drops.min(axis=0).round(2)}; "
            f"drops over 1 dB: {int((drops < -1).sum())} of {drops.size}")


if __name__ == "__main__":
  main()
