#!/bin/bash
# Session 17, call 1: the fused 8-bit AdamW step and the optimizer's gather by device copies
# (q_adam8_blockwise, q_cat_flat), together with the row kernels' four loads in flight
# (e06b58a), against main: the A/B on GPT-J-6B NF4 q,v (ab_bench.sh's per-phase medians tell the
# optimizer's share from the row kernels', forward and backward); gpu-check of the new build (its
# `cat_flat`, `adam8_*` lines and the row kernels'); the all-linear A/B; batch-1 decode. Parts run
# in that order while BUDGET seconds allow.
# Not run in session 17 (no device machine could be started). The new build: main with
# `git revert cde6a59 301fc63` applied (restores the optimizer's device ops, then the row
# kernels); the old one: main before that (a383c1a's tree).
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (main); source stash.sh first
#   BUDGET=500 bash xtask/device/session17_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-520} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj q,v $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=1 T_RUN=80 bash xtask/device/ab_bench.sh
fits 180 "gpu-check" && bash xtask/device/gpu_check.sh /tmp/xtask new
if fits 150 "all-linear A/B"; then
  echo "=== A/B gptj all-linear $(date -u +%T)"
  CASES='gptj-6b:nf4:all:8:512:default' ROUNDS=1 T_RUN=80 STEPS=5 bash xtask/device/ab_bench.sh
fi
fits 45 "decode" && bash xtask/device/decode.sh /tmp/xtask 60
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
