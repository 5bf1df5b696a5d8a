r"""The trainer's call form against the fixed one: does sizing calls by time cost speed?

``loops.make_train_loop`` runs a call as a ``lax.scan`` of exactly
``steps_per_call`` steps (what ``scripts/benchmark.py`` times), or, given a
traced ``num_steps``, as a ``lax.fori_loop`` over that many (what the trainer
runs, so that one compile serves calls of any length). This times both on the
same loop, state and data, alternating windows, and prints images/s and the
ratio per row.

  python scripts/bench_call_forms.py                       # CAE mse b8 fp32, b64 bf16
  python scripts/bench_call_forms.py --rows=TinyCAE:mse:8:float32 --size=32 --windows=3
  # The README's CAE on a 2-core CPU (a step takes ~25 s there):
  python scripts/bench_call_forms.py --rows=CAE:mse:8:float32 --images=64 --steps=2 --windows=1
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402


def _call(compiled, state, *, images, perm, key, count=None):
  extra = () if count is None else (count,)
  return compiled(state, images, perm, key, *extra)


def time_windows(call, state, windows: int) -> tuple[list[float], object]:
  """Seconds of ``windows`` calls after a warm-up one, threading the donated state."""
  state, metrics = call(state)
  jax.block_until_ready(metrics)
  seconds = []
  for _ in range(windows):
    t = time.perf_counter()
    state, metrics = call(state)
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - t)
  return seconds, state


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
  """The flags of a train-loop timing: rows, image size and count, windows, steps, output."""
  p.add_argument("--rows", default="CAE:mse:8:float32,CAE:mse:64:bfloat16")
  p.add_argument("--size", type=int, default=112)
  p.add_argument("--images", type=int, default=2048)
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--steps", type=int, default=0,
                 help="steps per call (0: 3200 / batch, clamped to 50..200)")
  p.add_argument("--out", default="")


def steps_per_call(args: argparse.Namespace, batch: int) -> int:
  """``--steps``, or about 3200 images per call within 50..200 steps."""
  return args.steps or min(200, max(50, 3200 // batch))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_loop_arguments(p)
  args = p.parse_args()
  images = jax.device_put(benchmark.synthetic_images(args.images, args.size, seed=0))
  rows = []
  for spec in args.rows.split(","):
    model, loss, batch, precision = spec.split(":")
    batch = int(batch)
    steps = steps_per_call(args, batch)
    row = benchmark.build_jax_loop(model, loss, batch, precision, images, steps)
    loop, state, perm, key = row["loop"], row["state"], row["perm"], row["step_key"]
    count = np.int32(steps)
    scan = loop.lower(state, images, perm, key).compile()
    fori = loop.lower(state, images, perm, key, count).compile()
    forms = {"scan": functools.partial(_call, scan, images=images, perm=perm, key=key),
             "fori": functools.partial(_call, fori, images=images, perm=perm, key=key,
                                       count=count)}
    seconds = {name: [] for name in forms}
    for _ in range(2):  # alternate, so drift hits both forms alike
      for name, call in forms.items():
        window, state = time_windows(call, state, args.windows)
        seconds[name] += window
    rate = {name: steps * batch / statistics.median(s) for name, s in seconds.items()}
    result = {"row": spec, "steps_per_call": steps, "img_per_s": rate,
              "fori_over_scan": rate["fori"] / rate["scan"]}
    rows.append(result)
    print(f"{spec}: scan {rate['scan']:,.0f} img/s, fori (trainer) {rate['fori']:,.0f} img/s, "
          f"ratio {result['fori_over_scan']:.3f}", flush=True)
  report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": rows}
  print(json.dumps(report, indent=2))
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
