#!/bin/bash
# Session 15, call 3: the recompute's unread block-output sums (sum_unread) A/B against call 1's
# build, GPT-J-6B and llama-7b NF4 q,v, the GPT-J peer in the same call, then gpu-check of the new
# build; between them, batch-1 decode with a cold and a warm kernel cache. Parts run in that order while BUDGET seconds (default 480) allow.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (call 1's); source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-480} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${GPTJ_ROUNDS:-2} T_RUN=70 bash xtask/device/ab_bench.sh
if fits 100 "gptj peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 90 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
# The slow first decode: two processes with an empty kernel cache, then two with the cache
# they filled (JIT compilation inside the timed 128 tokens would show as a slow cold pair).
rm -rf /tmp/kcache_cold
for run in cold1 warm1; do
  if fits 25 "decode $run"; then
    [ $run = cold1 ] && rm -rf /tmp/kcache_cold
    echo "=== decode $run $(date -u +%T)"
    QTUNE_KERNEL_CACHE=/tmp/kcache_cold timeout 60 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets qv \
      --warmup 0 --steps 0 --decode 128 > $OUT/decode_$run.txt 2>&1
    grep -oE '"decode_tok_s_b1[^,]*|"decode_ms_per_token_steady[^]]*|rror.*' $OUT/decode_$run.txt | head -5
  fi
done
if fits 90 "A/B llama"; then
  echo "=== A/B llama $(date -u +%T)"
  CASES='llama-7b:nf4:qv:8:512:default' ROUNDS=1 T_RUN=70 bash xtask/device/ab_bench.sh
fi
if fits 150 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 170 /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -E 'tiny_loss_curve|llama' $OUT/gpucheck.txt | cut -c1-300 | tail -6
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
