#!/bin/bash
# Session 13, first call: GPU check of the tree, a per-kernel profile of the llama-7b step (two
# blocks, `ncu`), and the dense-copy memory lever A/B (old = session 12's build, new = this one).
#   carry [".device"] with bin/xtask.gz and bin/xtask_old.gz; source xtask/device/stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
X=/tmp/xtask
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "${CHECK:-1}" = 1 ]; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 240 $X bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -E 'lora|gqa|tiny' $OUT/gpucheck.txt | cut -c1-300 | tail -6
fi
if [ "${PROFILE:-1}" = 1 ]; then
  echo "=== ncu llama-7b 2 blocks $(date -u +%T)"
  timeout ${T_NCU:-200} /usr/local/cuda/bin/ncu --csv --print-units base --metrics gpu__time_duration.sum \
    --log-file /tmp/ncu.csv $X bench train --model llama-7b --quant nf4 --targets ${NCU_TARGETS:-qv} --layers 2 \
    --warmup 1 --steps 1 --decode 0 > /tmp/ncu_app.txt 2>&1
  echo "ncu exit $?"; tail -2 /tmp/ncu_app.txt | cut -c1-300
  python3 xtask/device/kernel_profile.py /tmp/ncu.csv 45 | tee $OUT/ncu_summary.txt
  gzip -c /tmp/ncu.csv > $OUT/ncu.csv.gz
fi
echo "=== A/B $(date -u +%T)"
CASES=${CASES:-llama-7b:nf4:qv:8:512:default} ROUNDS=1 bash xtask/device/ab_bench.sh
echo "=== end $(date -u +%T)"
