#!/usr/bin/env bash
# Seed 000's CAE on LFW, 15 epochs, on one GPU of the device machine.
#
# Needs the carried data (.carry/data/lfw-deepfunneled.crop.tar.gz, made by
# scripts/make_lfw_carry.py) and wheels of the packages that machine lacks
# (.whl/: dm-pix, ml-collections, tensorboardX). Writes the run's results,
# curves, samples and log under $OUT. Times, in order: building the data cache
# (once), then the command from start to results.json with a cold XLA
# compilation cache, then the same command again with the cache warm (unless
# SKIP_WARM=1); with
# ALSO_BF16=1, then the command with --config.model.dtype=bfloat16 and a cold cache.
set -euo pipefail
OUT=${OUT:-/tmp/out}
EXTRA=("$@")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_DAE_CACHE=/tmp/jax_dae_cache
export TQDM_MININTERVAL=5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

t0=$(date +%s.%N)
python3 - <<'PY'
from configs import lfw_cae
from jax_dae import data
c = lfw_cae.get_config(); c.data.dir = ".carry/data"
print({k: v.shape for k, v in data.load(c.data).items()})
PY
echo "data cache built in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" | tee -a "$OUT/timing.txt"

run() {  # run NAME XLA_CACHE_DIR [FLAGS...]
  local t0; t0=$(date +%s.%N)
  python3 -m jax_dae.main --config=configs/lfw_cae.py --workdir="/tmp/$1" \
    --config.data.dir=.carry/data --compilation_cache="$2" "${EXTRA[@]}" "${@:3}" 2>&1 \
    | tr '\r' '\n' | grep -v -E '^\s*$' > "$OUT/$1.log" || { tail -50 "$OUT/$1.log"; exit 1; }
  echo "$1: command to results.json $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" | tee -a "$OUT/timing.txt"
}
run cold /tmp/xla_cache
cp /tmp/cold/results.json "$OUT/results.json"
cp /tmp/cold/curves.png "$OUT/curves.png"
cp "$(ls /tmp/cold/samples/*.png | tail -1)" "$OUT/samples_last.png"
cp /tmp/cold/metrics.jsonl "$OUT/metrics.jsonl"
if [[ "${SKIP_WARM:-0}" != 1 ]]; then
  run warm /tmp/xla_cache
fi
if [[ "${ALSO_BF16:-0}" == 1 ]]; then
  run cold_bf16 /tmp/xla_cache_bf16 --config.model.dtype=bfloat16
fi
grep -E "epoch [0-9]+:|test:|Compiled" "$OUT/cold.log" || true
