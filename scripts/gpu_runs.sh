#!/usr/bin/env bash
# Runs several experiments one after another on one GPU of the device machine.
#
#   bash scripts/gpu_runs.sh NAME=CONFIG[:ARG] [NAME=CONFIG[:ARG] ...] [-- FLAGS...]
#   e.g. bash scripts/gpu_runs.sh rescae=configs/lfw_rescae.py vcae=configs/lfw_vcae.py
#
# Needs the carried data (.carry/data/, scripts/make_lfw_carry.py), the VGG16
# weights for perceptual losses (.carry/vgg16_relu3_3.npz, made here with
#   python -m jax_dae.models.vgg --out=.carry/vgg16_relu3_3.npz --upto=relu3_3 --no-heads)
# and wheels of what that machine lacks (.whl/: dm-pix, ml-collections,
# tensorboardX). $DATA_DIR (default .carry/data) is passed as config.data.dir.
# $OUT/summary.jsonl gets one line per run ({"name": ..., "results": ...}),
# $OUT/NAME.png the last sample grid of each of the first 6 runs, and
# $OUT/runs.log the per-epoch lines.
set -uo pipefail
OUT=${OUT:-/tmp/out}
runs=(); flags=()
while (($#)); do
  if [[ $1 == -- ]]; then shift; flags=("$@"); break; fi
  runs+=("$1"); shift
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_DAE_CACHE=/tmp/jax_dae_cache
export JAX_DAE_VGG16_WEIGHTS=$PWD/.carry/vgg16_relu3_3.npz TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
copied=0
for run in "${runs[@]}"; do
  name=${run%%=*}; config=${run#*=}
  t0=$(date +%s.%N)
  python3 -m jax_dae.main --config="$config" --workdir="/tmp/runs/$name" \
    --config.data.dir="${DATA_DIR:-.carry/data}" --compilation_cache=/tmp/xla_cache "${flags[@]}" 2>&1 \
    | tr '\r' '\n' | grep -E "epoch [0-9]+:|test:|Compiled|rror" | sed "s/^/$name: /" \
    | tee -a "$OUT/runs.log"
  echo "$name: command to results.json $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" \
    | tee -a "$OUT/runs.log"
  python3 -c "import json, sys; print(json.dumps({'name': sys.argv[1], 'results': json.load(open(sys.argv[2]))}))" \
    "$name" "/tmp/runs/$name/results.json" >> "$OUT/summary.jsonl" 2>/dev/null
  if (( ++copied <= 6 )); then
    cp "$(ls /tmp/runs/$name/samples/*.png | tail -1)" "$OUT/$name.png" 2>/dev/null
  fi
done
