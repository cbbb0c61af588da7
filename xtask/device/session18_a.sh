#!/bin/bash
# Session 18, call 1: session 17's optimizer device ops (q_adam8_blockwise, q_cat_flat) with
# session 16's row kernels (four loads in flight), built as main + `git revert cde6a59 301fc63`,
# against main: the A/B on GPT-J-6B NF4 q,v (two rounds interleaved; ab_bench.sh's per-phase
# medians tell the optimizer's share from the row kernels'); gpu-check of the new build (its
# `cat_flat`, `adam8_*` lines, the row kernels' and the tiny loss curve); batch-1 decode. Parts
# run in that order while BUDGET seconds allow.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (main); source stash.sh first
#   BUDGET=540 bash xtask/device/session18_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj q,v $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${ROUNDS:-2} T_RUN=80 bash xtask/device/ab_bench.sh
if fits 190 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 200 /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E 'panicked|Error|"check":"failed"|"ok":false' $OUT/gpucheck.txt | cut -c1-300 | tail -12
  grep -E '"check":"(cat_flat|adam8|fused_mlp)' $OUT/gpucheck.txt | cut -c1-400
  grep -oE '"(cross_entropy|layer_norm|softmax|rms_norm)[a-z0-9_]*":[0-9.e-]*' $OUT/gpucheck.txt | tr '\n' ' '; echo
  grep -E 'tiny_loss_curve.*max_abs' $OUT/gpucheck.txt | cut -c1-300
fi
if fits 45 "decode"; then
  echo "=== decode $(date -u +%T)"
  timeout 60 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 > $OUT/decode.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_tok_s_b1_no_graph)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $OUT/decode.txt | tr '\n' ' '; echo
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
