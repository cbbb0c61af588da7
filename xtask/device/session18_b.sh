#!/bin/bash
# Session 18, call 2: GPT-J's block sum on fc_out's GEMM (`mlp_gelu_new_plus`: fc_out's bias and
# the block's attention output + residual added by the GEMM, beta = 1 in place, in the
# checkpointed forward) against call 1's build, GPT-J-6B NF4 q,v, two rounds interleaved; gpu-check
# of the new build (its `mlp_plus_*` lines); the peer on the same shape; the all-linear A/B.
# Parts run in that order while BUDGET seconds allow.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (call 1's new); source stash.sh first
#   BUDGET=560 bash xtask/device/session18_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-560} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj q,v $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${ROUNDS:-2} T_RUN=80 bash xtask/device/ab_bench.sh
if fits 190 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 200 /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E 'panicked|Error|"check":"failed"|"ok":false' $OUT/gpucheck.txt | cut -c1-300 | tail -12
  grep -E '"check":"fused_mlp' $OUT/gpucheck.txt | cut -c1-600
  grep -E 'tiny_loss_curve.*max_abs' $OUT/gpucheck.txt | cut -c1-300
fi
if fits 150 "gptj peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 90 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
if fits 150 "all-linear A/B"; then
  echo "=== A/B gptj all-linear $(date -u +%T)"
  CASES='gptj-6b:nf4:all:8:512:default' ROUNDS=1 T_RUN=80 STEPS=5 bash xtask/device/ab_bench.sh
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
