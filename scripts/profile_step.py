r"""Where the time of one jax_dae training step goes on the device (issue 9).

Builds the train loop of one ``scripts/benchmark.py`` row (``build_jax_loop``:
the same config, model, blur, loss, Adam and ``lax.scan`` of
``--steps_per_call`` steps over resident uint8 images), compiles it, runs one
warm-up call, times ``--calls`` calls without the profiler, then runs
``--calls`` more under ``jax.profiler.trace`` and reads the ``.xplane.pb``
back with ``jax.profiler.ProfileData`` (no TensorBoard needed).

Events used: on a GPU, the kernels and memcpys/memsets of the device plane
(``/device:GPU:0``, its ``Stream #...`` lines); elsewhere, or if the device
plane is missing (e.g. CUPTI unavailable), the XLA op events of the
``/host:CPU`` plane (thunks with an ``hlo_op`` stat, without the ``while``
etc. that contain others). The report says which plane it used.

Printed (and written with ``--out`` as JSON): wall time per step (untraced,
device-synchronised, and traced), summed op time per step, busy fraction
(union of op intervals / traced span), ops per step, the top kernels by total
time, the same by HLO op, totals by kernel category (conv/gemm, fusion,
copy/memset, other) and by region of the step (model forward/backward by layer
type, corruption, loss, batch gather, optimizer update), which comes from the
``op_name`` metadata of each HLO op in the compiled module.

Caveat: while a profiler session is active XLA runs its command buffers (CUDA
graphs) op by op, so the traced step can be slower than the untraced one; the
ratio is printed. Newer XLA can keep them with
``XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true`` (experimental).

Commands:

  # GPU, the batch-8 fp32 row of the benchmark:
  python scripts/profile_step.py --model CAE --loss mse --batch 8 --precision float32 \
      --out $OUT/profile_cae_b8.json
  # CPU smoke (TinyCAE at 16x16, about 30 s):
  python scripts/profile_step.py --smoke
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark as bench  # noqa: E402  (sets the memory fraction before jax starts)
import jax  # noqa: E402

FULL = dict(model="CAE", batch=8, image_size=112, num_images=1024, steps_per_call=0, calls=2)
SMOKE = dict(model="TinyCAE", batch=4, image_size=16, num_images=32, steps_per_call=5, calls=2)
# Kernel-name substrings per category, tried in order (lower case).
CATEGORIES = (
    ("copy/memset", ("memcpy", "memset", "copy")),
    ("conv/gemm", ("convolution", "conv_", "cudnn", "xmma", "gemm", "cutlass", "cublas", "wgmma",
                   "nchw", "nhwc", "dot")),
    ("fusion", ("fusion", "loop_", "input_", "reduce", "transpose", "wrapped_", "triton",
                "concatenate", "slice", "broadcast", "select", "scatter", "gather")),
)
# HLO ops that only contain others on the host timeline.
CONTAINERS = ("while", "conditional", "call")
# Lines that profilers derive from the kernels' annotations (they repeat the kernels' time).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Ops", "TensorFlow Ops",
                 "Framework Name Scope", "TensorFlow Name Scope", "XLA TraceMe", "Source code")
Op = collections.namedtuple("Op", "name hlo_op start end")


def category(name: str) -> str:
  lower = name.lower()
  for label, keys in CATEGORIES:
    if any(k in lower for k in keys):
      return label
  return "other"


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its ``op_name`` metadata (the JAX name stack)."""
  pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.M)
  return dict(pattern.findall(hlo_text))


def region(op_name: str) -> str:
  """Which part of the step an HLO op belongs to, from its JAX name stack."""
  if not op_name:
    return "no op_name (copies, loop plumbing)"
  path = op_name.split("/while/body/", 1)[-1]
  if "/while/cond" in op_name or "dynamic_update" in path:
    return "scan loop"
  if "vmap(" in path:
    return "corruption (per-example, vmap)"
  if any(k in path for k in ("_take", "remainder", "dynamic_slice", "gather")):
    return "batch gather"
  match = re.search(r"(transpose\()?jvp\((\w*)\)", path)
  if match:
    who = "VGG" if "vgg" in path.lower() else (match.group(2) or "loss")
    layers = re.findall(r"/([A-Za-z]+)_\d+/", path)
    direction = "backward" if match.group(1) else "forward"
    return f"{who} {direction}" + (f" {layers[-1]}" if layers else "")
  return "update (Adam, loss and metrics elementwise)"


def device_ops(data) -> tuple[str, list[Op]]:
  """The device's kernels if the trace has a device plane, else the host's XLA ops."""
  planes = list(data.planes)
  for plane in planes:
    if not plane.name.startswith("/device:") or "CUSTOM" in plane.name:
      continue
    lines = list(plane.lines)
    # Raw CUPTI lines are "Stream #N(...)"; derived ones ("XLA Ops", "XLA Modules",
    # "Steps", ...) repeat the same time, so take them only when there are no streams.
    chosen = ([ln for ln in lines if ln.name.startswith("Stream")]
              or [ln for ln in lines if ln.name == "XLA Ops"]
              or [ln for ln in lines if ln.name not in DERIVED_LINES])
    ops = [Op(e.name, _hlo_op(e), e.start_ns, e.start_ns + e.duration_ns)
           for ln in chosen for e in ln.events if e.duration_ns > 0]
    if ops:
      return f"{plane.name} ({len(chosen)} lines: {', '.join(ln.name for ln in chosen)[:120]})", ops
  ops = []
  for plane in planes:
    if not plane.name.startswith("/host:"):
      continue
    for ln in plane.lines:
      events = sorted((e for e in ln.events if _stat(e, "hlo_op")),
                      key=lambda e: (e.start_ns, -e.duration_ns))
      for i, e in enumerate(events):
        end = e.start_ns + e.duration_ns
        nested = i + 1 < len(events) and events[i + 1].start_ns < end
        if nested or _stat(e, "hlo_op").startswith(CONTAINERS):
          continue
        ops.append(Op(e.name, _stat(e, "hlo_op"), e.start_ns, end))
    if ops:
      return f"{plane.name} (host XLA op events; no device plane in the trace)", ops
  raise RuntimeError(f"no XLA op events in the trace; planes: {[p.name for p in planes]}")


def _stat(event, key: str) -> str:
  for name, value in event.stats:
    if name == key:
      return str(value)
  return ""


def _hlo_op(event) -> str:
  """The ``hlo_op`` stat, else the one inside an unparsed ``...#hlo_op=X#`` annotation stat."""
  found = _stat(event, "hlo_op")
  for _, value in ([] if found else event.stats):
    match = re.search(r"hlo_op=([^,#]+)", value) if isinstance(value, str) else None
    if match:
      return match.group(1)
  return found


def union_ns(ops: list[Op]) -> float:
  total, end = 0.0, float("-inf")
  for op in sorted(ops, key=lambda o: o.start):
    if op.end > end:
      total += op.end - max(op.start, end)
      end = op.end
  return total


def table(ops: list[Op], key, steps: int, op_ns: float) -> list[dict]:
  groups = collections.defaultdict(lambda: [0, 0.0])
  for op in ops:
    group = groups[key(op)]
    group[0] += 1
    group[1] += op.end - op.start
  rows = [{"name": name, "count_per_step": count / steps, "us_per_step": ns / steps / 1e3,
           "percent": 100 * ns / op_ns} for name, (count, ns) in groups.items()]
  return sorted(rows, key=lambda r: -r["us_per_step"])


def summarise(ops: list[Op], plane: str, steps: int, wall_s: float, names: dict[str, str]):
  op_ns = sum(op.end - op.start for op in ops)
  span_ns = max(op.end for op in ops) - min(op.start for op in ops)
  has_hlo = sum(bool(op.hlo_op) for op in ops) >= len(ops) / 2
  # On the host timeline the event names are the HLO ops: one table says it all.
  kernels_are_ops = all(op.name == op.hlo_op for op in ops)
  summary = {
      "plane": plane, "steps_traced": steps,
      "wall_us_per_step": wall_s / steps * 1e6 if wall_s else None,
      "traced_us_per_step": span_ns / steps / 1e3,
      "op_us_per_step": op_ns / steps / 1e3,
      "busy_fraction": union_ns(ops) / span_ns,
      "idle_us_per_step": (span_ns - union_ns(ops)) / steps / 1e3,
      "ops_per_step": len(ops) / steps,
      "by_kernel": [] if kernels_are_ops else table(ops, lambda o: o.name, steps, op_ns),
      "by_category": table(ops, lambda o: category(o.name), steps, op_ns),
  }
  for row in summary["by_kernel"]:
    row["category"] = category(row["name"])
  if has_hlo:
    summary["by_hlo_op"] = table(ops, lambda o: o.hlo_op or o.name, steps, op_ns)
    for row in summary["by_hlo_op"]:
      row["op_name"] = short_op_name(names.get(row["name"], ""))
    summary["by_region"] = table(ops, lambda o: region(names.get(o.hlo_op, "")), steps, op_ns)
  return summary


def print_summary(s: dict, top: int) -> None:
  wall = s["wall_us_per_step"]
  print(f"\nplane: {s['plane']}")
  print(f"steps traced: {s['steps_traced']}")
  print(f"wall per step, untraced: {wall:,.1f} us" if wall else "wall per step: -")
  ratio = f" ({s['traced_us_per_step'] / wall:.2f}x untraced)" if wall else ""
  print(f"wall per step, traced:   {s['traced_us_per_step']:,.1f} us{ratio}")
  print(f"op time per step:        {s['op_us_per_step']:,.1f} us (summed, overlaps counted twice)")
  print(f"busy fraction:           {s['busy_fraction']:.3f} (union of op intervals / traced span)")
  print(f"idle per step:           {s['idle_us_per_step']:,.1f} us (no op running: launch gaps, "
        "loop control, host waits)")
  print(f"ops per step:            {s['ops_per_step']:.1f}")
  sections = [("by category", "by_category", len(s["by_category"])),
              ("by region of the step (op_name metadata)", "by_region", top),
              ("top kernels", "by_kernel", top), ("top HLO ops", "by_hlo_op", top)]
  for title, key, limit in sections:
    if not s.get(key):
      continue
    print(f"\n{title}:\n  {'us/step':>10} {'%':>6} {'n/step':>7}  name")
    for row in s[key][:limit]:
      extra = f"  [{row['category']}]" if "category" in row else ""
      extra += f"  <{row['op_name']}>" if row.get("op_name") else ""
      print(f"  {row['us_per_step']:10,.1f} {row['percent']:6.1f} {row['count_per_step']:7.2f}  "
            f"{_short(row['name'])}{extra}")


def short_op_name(op_name: str) -> str:
  """The name stack inside the scanned step, without the wrappers every op shares."""
  path = op_name.split("/while/body/", 1)[-1]
  return path.removeprefix("closed_call/")


def _short(name: str, width: int = 70) -> str:
  return name if len(name) <= width else name[:width - 3] + "..."


def run_calls(compiled, state, rest, calls: int):
  """``calls`` back-to-back calls, synchronised at the end; returns ``(state, seconds)``."""
  t = time.perf_counter()
  for _ in range(calls):
    state, out = compiled(state, *rest)
  jax.block_until_ready((state, out))
  return state, time.perf_counter() - t


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", help=f"CAE-family model name ({FULL['model']})")
  p.add_argument("--loss", default="mse", choices=bench.LOSSES)
  p.add_argument("--batch", type=int, help=f"batch size ({FULL['batch']})")
  p.add_argument("--precision", default="float32", choices=bench.PRECISIONS)
  p.add_argument("--model_set", default="", type=bench.parse_model_set,
                 help="config.model overrides, e.g. full_res_conv=space_to_depth")
  p.add_argument("--steps_per_call", type=int,
                 help="steps per compiled call (0: benchmark.py's 3200 / batch in 50..200)")
  p.add_argument("--calls", type=int, help="calls timed, then calls traced (2)")
  p.add_argument("--image_size", type=int, help=f"image side ({FULL['image_size']})")
  p.add_argument("--num_images", type=int, help=f"resident images ({FULL['num_images']})")
  p.add_argument("--top", type=int, default=25, help="rows per table")
  p.add_argument("--out", help="write the summary as JSON here")
  p.add_argument("--trace_dir", help="keep the trace here (default: a temporary directory)")
  p.add_argument("--smoke", action="store_true", help="TinyCAE at 16x16, batch 4 (CPU)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  for name, value in (SMOKE if args.smoke else FULL).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  steps = bench.steps_per_window(args, args.batch)
  print(f"{args.model} {args.loss} batch {args.batch} {args.precision} "
        f"{args.image_size}px, {steps} steps/call, {args.calls} calls; devices {jax.devices()}")
  images = jax.device_put(bench.synthetic_images(args.num_images, args.image_size, args.seed + 1))
  row = bench.build_jax_loop(args.model, args.loss, args.batch, args.precision, images, steps,
                             model_set=args.model_set, seed=args.seed)
  rest = (images, row["perm"], row["step_key"])
  t = time.perf_counter()
  compiled = row["loop"].lower(row["state"], *rest).compile()
  print(f"compiled in {time.perf_counter() - t:.1f} s")
  state, _ = run_calls(compiled, row["state"], rest, 1)  # Warm-up.
  state, wall_s = run_calls(compiled, state, rest, args.calls)

  trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="profile_step_"))
  with jax.profiler.trace(str(trace_dir)):
    state, traced_s = run_calls(compiled, state, rest, args.calls)
  files = sorted(trace_dir.glob("**/*.xplane.pb"), key=lambda f: f.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  plane, ops = device_ops(jax.profiler.ProfileData.from_file(str(files[-1])))
  if jax.default_backend() == "gpu" and not plane.startswith("/device:"):
    print("WARNING: GPU backend but no device plane (is CUPTI available?); host op times only.")
  summary = summarise(ops, plane, steps * args.calls, wall_s, op_names(compiled.as_text()))
  summary.update(args=vars(args), trace=str(files[-1]), traced_call_s=traced_s,
                 device=jax.devices()[0].device_kind, jax=jax.__version__)
  print_summary(summary, args.top)
  if args.out:
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out}")
  return summary


if __name__ == "__main__":
  main()
