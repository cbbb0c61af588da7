#!/bin/bash
# Session 18, call 1: four builds on GPT-J-6B NF4 q,v, interleaved (ab_bench.sh's per-phase
# medians tell the optimizer's share from the row kernels' and the forward's):
#   old  = main (b9dd7c2);
#   new  = main + `git revert cde6a59 301fc63` (session 17's optimizer device ops
#          q_adam8_blockwise and q_cat_flat, session 16's row kernels with four loads in flight);
#   dev  = new + the block sum on fc_out's GEMM (mlp_gelu_new_plus, b31375b);
#   dev2 = dev + the head's loss keeping the input gradient, not the logits
#          (linear_cross_entropy, 0b3597b + 1543540; = `git revert 81eee5a` on main).
# Taken back mid-run in session 18 (nothing came back); session18_c.sh is the short version.
# Round 1 of the four; gpu-check of dev2 (its `cat_flat`, `adam8_*`, `mlp_plus_*`, `head_*` lines,
# the row kernels', the tiny loss curve; if it stops early, new's too); round 2 while BUDGET
# seconds allow; batch-1 decode.
#   carry [".device"] with bin/xtask.xz (new), bin/xtask_{old,dev,dev2}.xz (stripped, xz: four
#   builds and the tree fit in one carry); source stash.sh first
#   BUDGET=570 bash xtask/device/session18_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-570} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
export ORDER='old new dev dev2' CASES='gptj-6b:nf4:qv:8:512:default' T_RUN=80
echo "=== A/B gptj q,v round 1 $(date -u +%T)"
FIRST_ROUND=1 ROUNDS=1 bash xtask/device/ab_bench.sh
R1=$(( $(date +%s) - START ))
for b in dev2 new; do
  fits 190 "gpu-check $b" || break
  X=/tmp/xtask; [ $b = new ] || X=/tmp/xtask_$b
  bash xtask/device/gpu_check.sh $X $b
  # new's own check only where dev2's stopped before its end.
  grep -q 'max_abs_diff' $OUT/gpucheck_$b.txt && break
done
if fits $R1 "round 2"; then
  echo "=== A/B gptj q,v round 2 $(date -u +%T)"
  FIRST_ROUND=2 ROUNDS=2 bash xtask/device/ab_bench.sh
fi
fits 45 "decode" && bash xtask/device/decode.sh /tmp/xtask_dev2 60
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
