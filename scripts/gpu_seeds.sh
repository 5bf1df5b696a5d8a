#!/usr/bin/env bash
# Seed 000's CAE (configs/lfw_cae.py, 15 epochs) with 1 and with N seeds in one
# program, then N seeds with config.train.bn_stats=recomputed, on one GPU of
# the device machine: wall time of each, the test PSNR of every replica, and
# every epoch's validation PSNR (results.json,
# metrics.jsonl per run under $OUT; curves: jax_dae.plots.save_curves).
#
#   bash scripts/gpu_seeds.sh [N=4] [extra flags for every run...]
#
# Needs .whl/ and .carry/data as scripts/gpu_lfw_cae.sh does (carry both).
# The data cache is built first and the XLA cache is shared, so both runs
# start warm on data and the second compiles its own (N-replica) program.
set -euo pipefail
N=${1:-4}
EXTRA=("${@:2}")
source scripts/gpu_env.sh
export TQDM_DISABLE=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/log.txt"
python3 - <<'PY'
from configs import lfw_cae
from jax_dae import data
c = lfw_cae.get_config(); c.data.dir = ".carry/data"
print({k: v.shape for k, v in data.load(c.data).items()})
PY
run() {  # run NAME NUM_SEEDS [FLAGS...]
  local t0; t0=$(date +%s.%N)
  python3 -m jax_dae.main --config=configs/lfw_cae.py --workdir="/tmp/$1" \
    --config.data.dir=.carry/data --config.train.num_seeds="$2" "${EXTRA[@]}" "${@:3}" \
    > "/tmp/$1.log" 2>&1 || { tail -40 "/tmp/$1.log"; exit 1; }
  echo "$1: num_seeds=$2, command to results.json $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" \
    | tee -a "$OUT/log.txt"
  mkdir -p "$OUT/$1"
  cp "/tmp/$1/results.json" "/tmp/$1/metrics.jsonl" "$OUT/$1/"  # (at most 8 files come back)
  { echo "== $1"; grep -E "epoch [0-9]+:|test:|wall time" "/tmp/$1.log" | sed 's/^.*\] //'; } \
    | tee -a "$OUT/log.txt"
}
run seeds1 1
run "seeds$N" "$N"
# The evaluation fix: BatchNorm statistics recomputed under the current weights.
run "seeds${N}_recomputed" "$N" --config.train.bn_stats=recomputed
# Throughput of 1, 4 and 8 seeds in one program (CAE mse b8 fp32, b64 bf16).
python3 scripts/bench_seeds.py --windows=3 --out "$OUT/bench_seeds.json" 2>&1 \
  | grep -E "img/s|compiled" | tee -a "$OUT/log.txt"
