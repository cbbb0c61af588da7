#!/bin/bash
# Session 18, call 1: three builds on GPT-J-6B NF4 q,v, two rounds interleaved (ab_bench.sh's
# per-phase medians tell the optimizer's share from the row kernels'):
#   old = main (b9dd7c2);
#   new = main + `git revert cde6a59 301fc63` (session 17's optimizer device ops
#         q_adam8_blockwise and q_cat_flat, session 16's row kernels with four loads in flight);
#   dev = new + the block sum on fc_out's GEMM (mlp_gelu_new_plus).
# Then gpu-check of dev (its `cat_flat`, `adam8_*`, `mlp_plus_*` lines, the row kernels', the tiny
# loss curve; if it stops early, new's too); batch-1 decode. Parts run in that order while
# BUDGET seconds allow.
#   carry [".device"] with bin/xtask.gz (new), bin/xtask_old.gz, bin/xtask_dev.gz (stripped,
#   gzip -9: three builds and the tree just fit in one carry); source stash.sh first
#   BUDGET=540 bash xtask/device/session18_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj q,v $(date -u +%T)"
ORDER='old new dev' CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${ROUNDS:-2} T_RUN=80 bash xtask/device/ab_bench.sh
for b in dev new; do
  fits 190 "gpu-check $b" || break
  echo "=== gpu-check $b $(date -u +%T)"
  X=/tmp/xtask; [ $b = new ] || X=/tmp/xtask_$b
  timeout 200 $X bench gpu-check --steps 30 > $OUT/gpucheck_$b.txt 2>&1
  rc=$?; echo "gpu-check $b exit $rc"
  grep -E 'panicked|Error|"check":"failed"|"ok":false' $OUT/gpucheck_$b.txt | cut -c1-300 | tail -12
  grep -E '"check":"(cat_flat|adam8|fused_mlp)' $OUT/gpucheck_$b.txt | cut -c1-600
  grep -oE '"(cross_entropy|layer_norm|softmax|rms_norm)[a-z0-9_]*":[0-9.e-]*' $OUT/gpucheck_$b.txt | tr '\n' ' '; echo
  grep -E 'tiny_loss_curve.*max_abs' $OUT/gpucheck_$b.txt | cut -c1-300
  # new's own check only where dev's stopped before its end.
  grep -q 'tiny_loss_curve' $OUT/gpucheck_$b.txt && break
done
if fits 45 "decode"; then
  echo "=== decode $(date -u +%T)"
  timeout 60 /tmp/xtask_dev bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 > $OUT/decode.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_tok_s_b1_no_graph)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $OUT/decode.txt | tr '\n' ' '; echo
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
