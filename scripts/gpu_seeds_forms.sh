#!/usr/bin/env bash
# N seeds in one program, its two forms on one GPU of the device machine:
# scripts/bench_seeds.py (CAE mse b8 fp32 with N = 1, 4, 8; b64 bf16 with
# N = 1, 4; replicas vmapped or unrolled), then configs/lfw_cae.py with 4
# seeds, recomputed BatchNorm statistics and an average of the weights
# (config.train.ema_decay=EMA, default 0.999), in the form that was faster
# for 4 seeds at batch 8; its best replica exported (scripts/export_variables.py).
#
#   bash scripts/gpu_seeds_forms.sh [EMA]
#
# Needs .whl/ and .carry/data (carry both). Results under $OUT.
set -euo pipefail
EMA=${1:-0.999}
source scripts/gpu_env.sh
export TQDM_DISABLE=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/log.txt"
bench() {  # bench NAME ROWS SEEDS SECONDS: stopped after SECONDS (then no JSON)
  timeout "$4" python3 scripts/bench_seeds.py --rows="$2" --seeds="$3" --forms=vmap,unrolled \
    --windows=3 --steps=100 --out "$OUT/$1.json" 2>&1 | grep -E "img/s|compiled" \
    | tee -a "$OUT/log.txt" || echo "$1: stopped after $4 s" | tee -a "$OUT/log.txt"
}
bench bench_b8 CAE:mse:8:float32 1,4 150
FORM=$(python3 -c "
import json; rows = json.load(open('$OUT/bench_b8.json'))['rows']
rate = {r['form']: r['img_per_s_total'] for r in rows if r['num_seeds'] == 4}
print(max(rate, key=rate.get))")
t0=$(date +%s.%N)
python3 -m jax_dae.main --config=configs/lfw_cae.py --workdir=/tmp/run \
  --config.data.dir=.carry/data --config.train.num_seeds=4 --config.train.bn_stats=recomputed \
  --config.train.seeds_form="$FORM" --config.train.ema_decay="$EMA" > /tmp/run.log 2>&1 || { tail -40 /tmp/run.log; exit 1; }
echo "lfw_cae num_seeds=4 $FORM ema_decay=$EMA: command to results.json $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" \
  | tee -a "$OUT/log.txt"
mkdir -p "$OUT/run"
cp /tmp/run/results.json /tmp/run/metrics.jsonl "$OUT/run/"
grep -E "epoch [0-9]+:|test:|wall time" /tmp/run.log | sed 's/^.*\] //' | tee -a "$OUT/log.txt"
python3 scripts/export_variables.py --workdir=/tmp/run --out="$OUT/cae_blur.npz" | tee -a "$OUT/log.txt"
bench bench_b8_n8 CAE:mse:8:float32 1,8 150
bench bench_b64 CAE:mse:64:bfloat16 1,4 150
