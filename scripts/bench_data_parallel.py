r"""Data-parallel training on several devices: throughput per device count, and the same update.

Runs jax_dae's own train loop (``loops.make_train_loop`` with the batch
sharded over a ``distributed.make_mesh(n)`` mesh, parameters replicated) for each
device count, and reports:

* **throughput** (weak scaling): ``--per_device_batch`` images per device, so
  the global batch grows with the devices; images/s, median of ``--windows``
  device-synchronised calls of ``--steps`` steps after a warm-up call;
* **correctness** (strong scaling): one fixed global batch (the per-device
  batch times the largest count) trained for ``--steps`` steps from the same
  state on every count; the largest parameter difference from one device.
  SGD, not Adam, so that reduction-order rounding is not amplified.

On a CPU machine the devices are host platform devices
(``--xla_force_host_platform_device_count``, set here before JAX starts):
they share the same cores, so the throughput shows the sharding's overhead,
not a speed-up; GPU scaling runs belong to the multi-GPU issue. Commands::

  python scripts/bench_data_parallel.py                       # TinyCAE 16x16, 1,2,4,8 CPU devices
  python scripts/bench_data_parallel.py --model CAE --image_size 112 --per_device_batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __name__ == "__main__":
  # Host devices must be requested before JAX initialises its backends.
  _wanted = max(int(n) for n in (
      sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "1,2,4,8"
  ).split(","))
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_wanted}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import benchmark  # scripts/benchmark.py, beside this file  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jax_dae import distributed, loops  # noqa: E402


def run(step, host_state, images, *, devices: int, batch: int, steps: int):
  """A compiled loop of ``steps`` steps at global ``batch`` over ``devices`` devices.

  Returns ``(call, state)``: ``call()`` runs one more call on the current
  state and returns its metrics; ``state()`` is the current state.
  """
  mesh = distributed.make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  loop = loops.make_train_loop(step, batch_size=batch, steps_per_epoch=len(images) // batch,
                               steps_per_call=steps,
                               batch_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)))
  current = {"state": jax.device_put(host_state, replicated)}
  images = jax.device_put(images, replicated)
  perm = jax.device_put(jnp.arange(len(images)), replicated)
  key = jax.random.key(1)

  def call():
    current["state"], metrics = loop(current["state"], images, perm, key)
    return metrics

  return call, lambda: current["state"]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
  p.add_argument("--model", default="TinyCAE")
  p.add_argument("--loss", default="mse", choices=benchmark.LOSSES)
  p.add_argument("--precision", default="float32", choices=benchmark.PRECISIONS)
  p.add_argument("--image_size", type=int, default=16)
  p.add_argument("--per_device_batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=10, help="steps per compiled call")
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="write the report as JSON here")
  args = p.parse_args(argv)
  counts = [int(n) for n in args.devices.split(",")]
  if max(counts) > jax.device_count():
    p.error(f"--devices asks for {max(counts)} devices; {jax.device_count()} are visible "
            "(run as a script, or set --xla_force_host_platform_device_count).")

  big = args.per_device_batch * max(counts)
  images = benchmark.synthetic_images(4 * big, args.image_size, args.seed + 1)
  # The benchmark's row (config, blur, loss, initial state), with SGD.
  row = benchmark.build_jax_loop(args.model, args.loss, args.per_device_batch, args.precision,
                                 images, args.steps, optimizer="sgd", seed=args.seed)
  step, host_state = row["train_step"], jax.device_get(row["state"])
  print(f"{args.model} {args.loss} {args.precision} {args.image_size}px, "
        f"{args.per_device_batch} images per device, {args.steps} steps per call; "
        f"devices: {jax.devices()[0].device_kind} x {jax.device_count()}", flush=True)

  rows, reference = [], None
  for n in counts:
    batch = args.per_device_batch * n
    call, _ = run(step, host_state, images, devices=n, batch=batch, steps=args.steps)
    seconds = benchmark.median_call_seconds(call, repeats=args.windows)
    # Strong scaling: the same global batch from the same state on every count.
    fixed, state = run(step, host_state, images, devices=n, batch=big, steps=args.steps)
    fixed()
    params = jax.device_get(state().params)
    reference = reference or params
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True))
    rows.append({"devices": n, "global_batch": batch, "images_per_s": batch * args.steps / seconds,
                 "max_param_diff_vs_1": diff})
  base = rows[0]["images_per_s"] / rows[0]["devices"]
  print(f"{'devices':>7s} {'batch':>6s} {'img/s':>10s} {'per device':>10s} {'efficiency':>10s} "
        f"{'max |dparam| vs first':>22s}")
  for r in rows:
    r["efficiency"] = r["images_per_s"] / r["devices"] / base
    print(f"{r['devices']:7d} {r['global_batch']:6d} {r['images_per_s']:10,.0f} "
          f"{r['images_per_s'] / r['devices']:10,.0f} {r['efficiency']:10.2f} "
          f"{r['max_param_diff_vs_1']:22.2e}", flush=True)
  report = {"args": vars(args), "device_kind": jax.devices()[0].device_kind, "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
