#!/bin/bash
# Session 14, call 3: batched greedy on the static-shape path (bench generate vs the peer on the
# same batches), gpu-check (the several-row decode ops and a batch through graphs), the 8-bit
# optimizer state cache A/B (old = 1af866a), GPT-J-6B q,v and all-linear vs the peer. Parts run
# in that order while BUDGET seconds (default 420) allow their expected length.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz; source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-420} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
nvidia-smi --query-gpu=name --format=csv,noheader
PEER=0 T_OURS=120 bash xtask/device/session14_b.sh
if fits 60 "peer generate"; then
  echo "=== peer generate $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 120 python3 xtask/device/peer_generate.py /tmp/gen_b32.json 2>&1 | grep -E '^\{|Error' | tee -a $OUT/generate.txt
fi
if fits 150 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout ${T_CHECK:-170} /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -E 'decode_ops|greedy_decode_batch|tiny_loss_curve","cpu_first' $OUT/gpucheck.txt | cut -c1-400
fi
if fits 45 "optimizer A/B"; then
  echo "=== A/B $(date -u +%T)"
  CASES='llama-7b:nf4:all:8:512:default' ROUNDS=1 T_RUN=60 bash xtask/device/ab_bench.sh
fi
if fits 25 "gptj q,v"; then
  echo "=== gptj qv ours $(date -u +%T)"
  timeout 60 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets qv --warmup 3 --steps 8 --decode 0 2>&1 | grep step_s_median
fi
if fits 60 "gptj q,v peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 75 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
