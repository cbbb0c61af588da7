#!/bin/bash
# Session 19, call 3: the pinned arena of parking (dev4 = main at the arena commit) on the GPU:
# gpu-check (park_round_trip in three shapes, park_tiny_loss_curve and every other line), then
# GPT-J-6B NF4 q,v with --offload, dev3 (call 1's, one pinned buffer per size) against dev4.
#   carry [".device"] with bin/xtask_dev3.xz (a build of d23a933, the code call 1 ran: one pinned
#   buffer per size) and bin/xtask_dev4.xz (a build of main); source stash.sh first
#   BUDGET=240 bash xtask/device/session19_c.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-240} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_dev4 || exit 1
bash xtask/device/gpu_check.sh /tmp/xtask_dev4 dev4 200
if fits 30 "A/B"; then
  CASES='gptj-6b:nf4:qv:8:512:default' ORDER='dev3@offload dev4@offload' ROUNDS=1 T_RUN=60 bash xtask/device/ab_bench.sh
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
