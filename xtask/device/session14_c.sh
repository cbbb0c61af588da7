#!/bin/bash
# Session 14, call 3: batched greedy on the static-shape path (bench generate vs the peer on the
# same batches), gpu-check (the several-row decode ops and a batch through graphs), the 8-bit
# optimizer state cache A/B (old = 1af866a), GPT-J-6B q,v and all-linear vs the peer.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz; source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
nvidia-smi --query-gpu=name --format=csv,noheader
PEER=0 T_OURS=120 bash xtask/device/session14_b.sh
echo "=== gpu-check $(date -u +%T)"
timeout ${T_CHECK:-170} /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
echo "gpu-check exit $?"
grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
grep -E 'decode_ops|greedy_decode_batch|tiny_loss_curve","cpu_first' $OUT/gpucheck.txt | cut -c1-400
echo "=== peer generate $(date -u +%T)"
[ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
timeout 150 python3 xtask/device/peer_generate.py /tmp/gen_b32.json 2>&1 | grep -E '^\{|Error' | tee -a $OUT/generate.txt
echo "=== A/B $(date -u +%T)"
CASES='llama-7b:nf4:all:8:512:default gptj-6b:nf4:qv:8:512:default' ROUNDS=1 T_RUN=90 bash xtask/device/ab_bench.sh
echo "=== gptj all ours $(date -u +%T)"
timeout 90 /tmp/xtask bench train --model gptj-6b --quant nf4 --targets all --warmup 3 --steps 8 --decode 0 2>&1 | grep step_s_median
for p in ${PEERS:-nf4 nf4-all}; do
  echo "=== peer gptj $p $(date -u +%T)"
  timeout ${T_PEER:-75} python3 .device/peer_hf.py train $p 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
done
echo "=== end $(date -u +%T)"
