#!/bin/bash
# The unmeasured GPU-path stack against main on GPT-J-6B NF4 q,v (one round: both builds' loss
# curves and per-phase medians), then gpu-check of the stack, then a second round in the other
# order while BUDGET allows. Written for session 18's last call, which never ran (no machine).
#   old  = main (81eee5a's tree = b9dd7c2's code);
#   dev2 = main with 81eee5a reverted (`git revert 81eee5a`): session 17's optimizer device ops,
#          session 16's row kernels (four loads in flight), the block sum on fc_out's GEMM and
#          the head's loss without its logits (1543540's tree).
#   carry [".device"] with bin/xtask_old.xz and bin/xtask_dev2.xz; source stash.sh first
#   BUDGET=330 bash xtask/device/session18_c.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-330} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
export CASES='gptj-6b:nf4:qv:8:512:default' T_RUN=75
echo "=== A/B gptj q,v round 1 $(date -u +%T)"
ORDER='old dev2' FIRST_ROUND=1 ROUNDS=1 bash xtask/device/ab_bench.sh
R1=$(( $(date +%s) - START ))
fits 170 "gpu-check dev2" && bash xtask/device/gpu_check.sh /tmp/xtask_dev2 dev2 180
if fits $R1 "round 2"; then
  echo "=== A/B gptj q,v round 2 $(date -u +%T)"
  ORDER='dev2 old' FIRST_ROUND=2 ROUNDS=2 bash xtask/device/ab_bench.sh
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
