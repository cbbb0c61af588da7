#!/bin/bash
# Session 16, call 3: the new build (2 GEMV rows per plane by default, the fused MLP) in one
# process each: GPT-J-6B NF4 q,v training then batch-1 decode (twice: the machine's kernel cache
# empty, then filled), the decode step's breakdown, and the GPT-J peer in the same call.
#   carry [".device"] with bin/xtask.gz; source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache_b
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-420} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for run in cold warm; do
  if fits 60 "train+decode $run"; then
    echo "=== train + decode ($run kernel cache) $(date -u +%T)"
    timeout 120 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets qv --batch 8 --seq 512 \
      --warmup 3 --steps 8 --decode 128 > $OUT/train_decode_$run.txt 2>&1
    grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib|prefill_tok_s|decode_tok_s_b1|decode_tok_s_b1_no_graph)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
      $OUT/train_decode_$run.txt | tr '\n' ' '; echo
  fi
done
if fits 100 "gptj peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 90 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
if fits 60 "decode profile"; then
  echo "=== decode profile $(date -u +%T)"
  timeout 90 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 --decode-profile > $OUT/decode_profile.txt 2>&1
  grep '^{' $OUT/decode_profile.txt | cut -c1-200 | head -30
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
