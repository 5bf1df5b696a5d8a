#!/usr/bin/env bash
# Issue 23: jax_dae against every PyTorch variant (scripts/torch_reference.py VARIANTS) on the
# full 16-row grid ({CAE mse, CAE perceptual, ResCAE perceptual, CAE/ResCAE mse} -- see below;
# batch {8, 64}; {float32, bfloat16}) in one device call, each row's jax_dae and PyTorch
# numbers from the same process on the same GPU. The report keeps the fastest variant per row
# (benchmark.py summarise_row) and lists all of them.
#
# Usage, from the repository root on the GPU machine (torch 2.11 + JAX 0.11.2 preinstalled, no
# internet; dm-pix, ml-collections, tensorboardX come from .whl/, which must be carried):
#
#   OUT=$OUT bash scripts/gpu_torch_strong.sh
#
# Outputs in $OUT: torch_strong.json, torch_strong.md, torch_strong.log (and shard_*.log).
#
# Time: every row compiles one JAX loop (7-27 s on an H100) and up to seven torch.compile'd
# variants (12-35 s each, max-autotune longer), so a row takes 2-4 minutes. With several GPUs
# visible the rows are sharded, one process per GPU (16 rows on 8 GPUs: 2 rows per GPU, about
# 6 minutes); on one GPU, rows that would start after TORCH_STRONG_DEADLINE_S are left, and the
# same command with the state in $STATE (default runs/torch_strong, carried back) resumes them.
# Variants run fastest-expected first, so a row cut by the deadline keeps the strong ones.
#
# Every process stops by TORCH_STRONG_HARD_LIMIT_S (default 520 s), so the call ends within
# 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/torch_strong/out}"
STATE="${TORCH_STRONG_STATE:-runs/torch_strong}"
DEADLINE="${TORCH_STRONG_DEADLINE_S:-400}"
HARD_LIMIT="${TORCH_STRONG_HARD_LIMIT_S:-520}"
MODES="${TORCH_STRONG_MODES:-graph-compile,reduce-overhead,graph,compile,legacy-reduce-overhead,eager,max-autotune-no-cudagraphs,graph-max-autotune}"
mkdir -p "$OUT" "$STATE"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
# Inductor's caches per process (shards must not race on one directory).
if [[ -z "${JAX_DAE_VGG16_WEIGHTS:-}" && -f runs/vgg16_relu3_3.npz ]]; then
  export JAX_DAE_VGG16_WEIGHTS="$PWD/runs/vgg16_relu3_3.npz"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
  | tee "$OUT/nvidia-smi.csv" || true
python3 -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__, jax.devices())" \
  | tee "$OUT/versions.txt"
NGPU="$(nvidia-smi -L 2>/dev/null | wc -l)"
# The 16 rows: CAE x {mse, perceptual} and ResCAE x {mse, perceptual}, x b{8,64} x {fp32, bf16}.
GRID=(--models CAE,ResCAE --losses mse,perceptual --batches 8,64 --precisions float32,bfloat16
      --torch_modes "$MODES" --no_eval --resume --deadline_s "$DEADLINE")

if [[ "$NGPU" -le 1 ]]; then
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_0 timeout -k 10 "$HARD_LIMIT" \
    python3 scripts/benchmark.py --check "${GRID[@]}" --out "$STATE/torch_strong.json" \
    --markdown "$STATE/torch_strong.md" "$@" 2>&1 | tee -a "$OUT/torch_strong.log"
else
  pids=()
  for ((i = 0; i < NGPU; i++)); do
    check=()
    [[ "$i" -eq 0 ]] && check=(--check)
    CUDA_VISIBLE_DEVICES="$i" TORCHINDUCTOR_CACHE_DIR="/tmp/inductor_$i" \
      timeout -k 10 "$HARD_LIMIT" python3 scripts/benchmark.py "${check[@]}" "${GRID[@]}" \
      --shard "$i/$NGPU" --out "$STATE/shard_$i.json" --markdown "$STATE/shard_$i.md" "$@" \
      > "$OUT/shard_$i.log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  tail -n 25 "$OUT"/shard_*.log
  shards=()
  for ((i = 0; i < NGPU; i++)); do [[ -f "$STATE/shard_$i.json" ]] && shards+=("$STATE/shard_$i.json"); done
  python3 scripts/benchmark.py --merge "${shards[@]}" "${GRID[@]}" \
    --out "$STATE/torch_strong.json" --markdown "$STATE/torch_strong.md" 2>&1 \
    | tee -a "$OUT/torch_strong.log"
fi

cp "$STATE"/torch_strong.json "$STATE"/torch_strong.md "$OUT/" 2>/dev/null || true
cp "$STATE"/shard_*.json "$OUT/" 2>/dev/null || true
echo "Wrote $OUT/torch_strong.json and $OUT/torch_strong.md"
