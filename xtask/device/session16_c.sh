#!/bin/bash
# Session 16, call 3: the row kernels with four loads in flight per lane (e06b58a; LayerNorm,
# RMSNorm, cross-entropy, attention softmax; designed bit-identical) A/B against the baseline,
# GPT-J-6B NF4 q,v, with the GPT-J peer in the same call; gpu-check of the new build; then, with
# the new build, batch-1 decode (2 GEMV rows per plane by default since 4c7459a) and its step
# breakdown. Parts run in that order while BUDGET seconds (default 420) allow.
# Not run in session 16 (no machine could be started): e06b58a was reverted in 301fc63 until it
# has; build the new binary from main with `git revert 301fc63` (or branch
# wip/row-kernels-loads-in-flight) applied, the old one from main.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (baseline); source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-420} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${GPTJ_ROUNDS:-1} T_RUN=80 bash xtask/device/ab_bench.sh
if fits 100 "gptj peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 90 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
if fits 170 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 190 /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E 'FAIL|panicked|Error|tolerance' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -oE '"(cross_entropy|layer_norm|softmax|rms_norm)[a-z0-9_]*":[0-9.e-]*' $OUT/gpucheck.txt | tr '\n' ' '; echo
  grep -E 'tiny_loss_curve.*max_abs' $OUT/gpucheck.txt | cut -c1-300
fi
fits 40 "decode" && bash xtask/device/decode.sh /tmp/xtask 90
fits 50 "decode profile" && bash xtask/device/decode.sh /tmp/xtask 90 --decode-profile
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
