#!/bin/bash
# Session 13, the recompute that skips unread products: A/B against the previous build (old),
# llama-7b q,v and all-linear against the peer, GPT-J-6B q,v, then the GPU check.
#   carry [".device"] with bin/xtask.gz and bin/xtask_old.gz; source xtask/device/stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
X=/tmp/xtask
echo "=== A/B $(date -u +%T)"
CASES='llama-7b:nf4:qv:8:512:default llama-7b:nf4:all:8:512:default' ROUNDS=1 bash xtask/device/ab_bench.sh
echo "=== llama-7b vs peer $(date -u +%T)"
MODELS=llama-7b MODES='nf4:qv nf4:all' PEERS='nf4 nf4-all' DECODE=0 T_OURS=120 T_PEER=170 \
  bash xtask/device/llama_bench.sh 2>&1 | grep -E '^===|step_s_median|exit [^0]'
echo "=== gptj-6b $(date -u +%T)"
timeout 60 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 3 --steps 8 --decode 0 2>&1 | grep step_s_median
echo "=== gpu-check $(date -u +%T)"
timeout ${T_CHECK:-150} $X bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
echo "gpu-check exit $?"
grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
grep -E 'tiny_loss_curve","cpu_first' $OUT/gpucheck.txt | cut -c1-300
echo "=== end $(date -u +%T)"
