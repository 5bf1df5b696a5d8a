#!/usr/bin/env bash
# On one GPU of the device machine: does the trainer's time-sized call cost speed?
#
# 1. scripts/bench_call_forms.py: the same train loop as a fixed lax.scan (what
#    scripts/benchmark.py times) and as the trainer's fori_loop over a traced
#    step count, CAE mse b8 fp32 and b64 bf16, alternating windows.
# 2. scripts/gpu_lfw_cae.sh's cold run of configs/lfw_cae.py (15 epochs) with
#    the trainer as it is now, to compare its train phase with docs/benchmarks.md.
# Needs .whl/ and .carry/data as gpu_lfw_cae.sh does. Results under $OUT.
set -euo pipefail
source scripts/gpu_env.sh
python3 scripts/bench_call_forms.py --out "$OUT/call_forms.json"
SKIP_WARM=1 bash scripts/gpu_lfw_cae.sh
