r"""Throughput of N seeds in one program: images/s per replica and in total.

The train loop of ``scripts/benchmark.py`` (a ``lax.scan`` of train steps on
device-resident uint8 images), with the state, data order and keys of N
replicas on a leading axis (``config.train.num_seeds``; ``jax_dae.replicas``).
Rows alternate windows, so drift hits every N alike; the ratio to N = 1 says
what the extra seeds cost.

  python scripts/bench_seeds.py                                  # GPU grid
  python scripts/bench_seeds.py --rows=TinyCAE:mse:8:float32 --seeds=1,2 --size=32 \
      --images=256 --steps=5 --windows=2                         # CPU check
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_call_forms  # noqa: E402
import benchmark  # noqa: E402

from jax_dae import corruptions, loops, models, optimizers, replicas, steps  # noqa: E402
from jax_dae.data import pipeline  # noqa: E402


def build(spec: str, num_seeds: int, images, steps_per_call: int, form: str = "vmap"):
  """``call(state) -> (state, metrics)`` of one row with N replicas, and the first state."""
  model_name, loss_name, batch, precision = spec.split(":")
  batch = int(batch)
  config = benchmark.make_config(model_name, loss_name, batch, precision, None)
  image_shape = tuple(images.shape[1:])
  reps = replicas.Replicas(seed=0, num=num_seeds, form=form)
  init_key, data_key, step_key, _ = reps.keys()
  train_step = steps.make_train_step(loss_fn=benchmark.create_loss(config),
                                     corrupt=corruptions.parse(config.corruption, image_shape))
  loop = loops.make_train_loop(train_step, batch_size=batch,
                               steps_per_epoch=images.shape[0] // batch,
                               steps_per_call=steps_per_call, replicas=reps)
  init = reps.map(functools.partial(steps.init_state, models.from_config(config),
                                    optimizers.create(config), image_shape))
  state = jax.jit(init)(init_key)
  perm = jax.jit(reps.map(functools.partial(pipeline.permutation, num_examples=len(images)),
                          in_axes=(0, None)))(data_key, 0)
  compiled = loop.lower(state, images, perm, step_key).compile()
  return (lambda s: compiled(s, images, perm, step_key)), state, batch


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench_call_forms.add_loop_arguments(p)
  p.add_argument("--seeds", default="1,4,8")
  p.add_argument("--forms", default="vmap", help="vmap,unrolled: replicas.Replicas.form")
  args = p.parse_args()
  images = jax.device_put(benchmark.synthetic_images(args.images, args.size, seed=0))
  variants = [(n, form) for n in (int(n) for n in args.seeds.split(","))
              for form in (args.forms.split(",") if n > 1 else ["vmap"])]
  rows = []
  for spec in args.rows.split(","):
    steps_per_call = bench_call_forms.steps_per_call(args, int(spec.split(":")[2]))
    built = {}
    for n, form in variants:
      t = time.perf_counter()
      built[n, form] = build(spec, n, images, steps_per_call, form)
      print(f"{spec} N={n} {form}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
    seconds = {v: [] for v in variants}
    states = {v: b[1] for v, b in built.items()}
    for _ in range(args.windows):  # alternate, so drift hits every variant alike
      for v, (call, _, _) in built.items():
        states[v], metrics = call(states[v])  # warm-up on the first window
        jax.block_until_ready(metrics)
        t = time.perf_counter()
        states[v], metrics = call(states[v])
        jax.block_until_ready(metrics)
        seconds[v].append(time.perf_counter() - t)
    batch = built[variants[0]][2]
    base = steps_per_call * batch / statistics.median(seconds[variants[0]])
    for n, form in variants:
      per_replica = steps_per_call * batch / statistics.median(seconds[n, form])
      row = {"row": spec, "num_seeds": n, "form": form, "steps_per_call": steps_per_call,
             "img_per_s_per_replica": per_replica, "img_per_s_total": per_replica * n,
             "total_over_one_seed": per_replica * n / base,
             "window_s": seconds[n, form]}
      rows.append(row)
      print(f"{spec} N={n} {form}: {per_replica:,.0f} img/s per replica, {per_replica * n:,.0f} "
            f"total ({row['total_over_one_seed']:.2f}x one seed's)", flush=True)
  report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": rows}
  print(json.dumps(report, indent=2))
  benchmark.write_json(args.out or None, report)


if __name__ == "__main__":
  main()
