#!/usr/bin/env bash
# Times the CAE's exact layer forms on a GPU: single layers (scripts/bench_layers.py) and whole
# training steps with each form (scripts/benchmark.py --model_set), jax_dae only.
#
# Usage, from the repository root on the GPU machine, wheels installed as in
# scripts/gpu_benchmark.sh: OUT=/tmp/forms bash scripts/gpu_layer_forms.sh
# Outputs in $OUT: layers.log, layers.json, steps.log, steps_<form>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/layer_forms}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python scripts/bench_layers.py --variants space_to_depth,space_to_depth_matmul \
  --layers "${LAYERS:-out_9x9_64to3_112,stem_9x9_3to64_112,down_64to64_112,down_64to128_56,down_128to256_28}" \
  --out "$OUT/layers.json" > "$OUT/layers.log" 2>&1

ROWS=(--models CAE --losses "${LOSSES:-mse}" --batches "${BATCHES:-8,64}"
      --precisions "${PRECISIONS:-float32,bfloat16}")
declare -A FORMS=(
  [default]=""
  [s2d_full_res]="full_res_conv=space_to_depth"
  [s2d_down]="downsample=space_to_depth"
  [s2d_both]="full_res_conv=space_to_depth,downsample=space_to_depth"
)
for form in ${FORM_ORDER:-default s2d_full_res s2d_down s2d_both}; do
  python scripts/benchmark.py --skip_torch --no_eval "${ROWS[@]}" --model_set "${FORMS[$form]}" \
    --out "$OUT/steps_$form.json" 2>&1 | sed "s/^/[$form] /" >> "$OUT/steps.log"
done
