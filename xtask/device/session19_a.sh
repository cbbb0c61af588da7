#!/bin/bash
# Session 19, call 1: GPT-J-6B NF4 q,v (8 × 512, LoRA r 16), three runs interleaved:
#   old          = main at 3e2956a (b9dd7c2's code);
#   dev3         = 977b223 with 81eee5a reverted: session 17's optimizer device ops, session 16's
#                  row kernels, the block sum on fc_out's GEMM, the head's loss without its
#                  logits, and the parking of block inputs (off unless asked);
#   dev3@offload = dev3 with --offload: the checkpointed block inputs parked in host memory.
# Round 1; gpu-check of dev3 (the stack's lines, park_round_trip, park_tiny_loss_curve); round 2
# while BUDGET seconds allow.
#   carry [".device"] with bin/xtask_old.xz, bin/xtask_dev3.xz; source stash.sh first
#   BUDGET=440 bash xtask/device/session19_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-440} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
export ORDER='old dev3 dev3@offload' CASES='gptj-6b:nf4:qv:8:512:default' T_RUN=75
echo "=== A/B gptj q,v round 1 $(date -u +%T)"
FIRST_ROUND=1 ROUNDS=1 bash xtask/device/ab_bench.sh
R1=$(( $(date +%s) - START ))
fits 190 "gpu-check dev3" && bash xtask/device/gpu_check.sh /tmp/xtask_dev3 dev3 200
if fits $R1 "round 2"; then
  echo "=== A/B gptj q,v round 2 $(date -u +%T)"
  ORDER='dev3@offload dev3 old' FIRST_ROUND=2 ROUNDS=2 bash xtask/device/ab_bench.sh
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
