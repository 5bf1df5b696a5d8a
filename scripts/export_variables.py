r"""A trained run's inference variables in one small file: what a pretrained model ships.

Loads the run as ``inference.load`` does (the best checkpoint; for several
seeds the replica with the best validation PSNR; the weights' average where
the run kept one) and writes its variables, flattened, to an ``.npz``
(``params/Conv_0/kernel``, ``batch_stats/BatchNorm_0/mean``, ...) with
``config.json`` and the run's test metrics (``results.json``'s replica) in
its ``__meta__`` entry.

  python scripts/export_variables.py --workdir=runs/lfw_cae --out=cae_blur.npz
  python scripts/export_variables.py --workdir=... --out=... --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_dae import inference, writers  # noqa: E402


def export(workdir: Path, out: Path, dtype: str = "float32", replica: int | None = None) -> dict:
  """Writes ``out``; returns its metadata."""
  denoiser = inference.load(workdir, replica=replica)
  flat = traverse_util.flatten_dict(jax.device_get(dict(denoiser.variables)), sep="/")
  arrays = {k: np.asarray(v, dtype=np.dtype(dtype) if dtype != "bfloat16" else np.float32)
            for k, v in flat.items()}
  if dtype == "bfloat16":  # numpy has no bfloat16: store the upper 16 bits of each float32.
    arrays = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in arrays.items()}
  results_path = workdir / "results.json"
  results = json.loads(results_path.read_text()) if results_path.is_file() else {}
  best = results.get("best_replica", 0) if replica is None else replica
  meta = {
      "name": denoiser.name, "step": denoiser.step, "dtype": dtype,
      "config": json.loads((workdir / "config.json").read_text()),
      "replica": results.get("replicas", [{}])[best] if results else {},
      "spread": results.get("spread", {}),
  }
  writers.save_npz(out, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
  return meta


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", type=Path, required=True)
  p.add_argument("--out", type=Path, required=True)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--replica", type=int, default=None)
  args = p.parse_args()
  meta = export(args.workdir, args.out, args.dtype, args.replica)
  print(f"{args.out}: {meta['name']} at step {meta['step']}, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
  main()
