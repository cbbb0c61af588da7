#!/bin/bash
# For session 22 (not yet run): the quantized decode GEMV with 2 or 4 planes a row group
# (branch wip/gemv-ksplit, e65be29: `set_gemv_k_split`, default 1). Build OLD from main and NEW
# from the branch (`git worktree add ../ksplit wip/gemv-ksplit`, then the usual release build
# there), both stripped and xz'd into .device/bin.
#  1. gpu-check of NEW, the GEMV groups only (`--only gemv`): r2k2 / r2k4 within the tolerance
#     against dequantize + GEMM, the parts GEMV at k2 bit-identical to each weight's own;
#  2. `bench dequant --decode` of NEW: r1/r2/r4 × k1/k2/k4 µs and GB/s on GPT-J's shapes;
#  3. decode in separate processes: NEW at --gemv-k-split 1, 2, 4 and OLD.
# If k2 (or k4) is faster end to end and its checks pass, make it the default in
# `crates/kernels/src/cuda/gemv.rs` (GEMV_K_SPLIT) and merge the branch.
#   carry [".device"] with bin/xtask_$NEW.xz, bin/xtask_$OLD.xz; source stash.sh first, then
#   NEW=devA OLD=devB BUDGET=200 bash xtask/device/session22_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the branch build} OLD=${OLD:?OLD=the main build}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-200} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 /tmp/xtask_$NEW bench gpu-check --steps 2 --only gemv > $OUT/gpucheck_$NEW.txt 2>&1
echo "gpu-check $NEW exit $?"
grep -E '"check":"failed"|panicked|rror' $OUT/gpucheck_$NEW.txt | cut -c1-300 | head -8
grep -oE '"gemv_[a-z0-9_]*k[24][a-z0-9_]*":[a-z0-9.e-]*' $OUT/gpucheck_$NEW.txt | tr '\n' ' '; echo
if fits 40 "bench dequant"; then
  timeout 60 /tmp/xtask_$NEW bench dequant --decode --iters 20 > $OUT/gemv_$NEW.txt 2>&1
  grep '"bench":"gemv"' $OUT/gemv_$NEW.txt | grep -E 'nf4|int8' | grep -oE '"name":"[^"]*"|"us":[0-9.]*|"GBps":[0-9.]*' | paste - - - | head -40
fi
for run in $NEW:1 $NEW:2 $NEW:4 $OLD:1 $NEW:2; do
  b=${run%:*} k=${run#*:}
  fits 15 "decode $run" || continue
  f=$OUT/decode_${b}_k$k.txt
  if [ $b = $NEW ]; then o="--gemv-k-split $k"; else o=; fi
  timeout 40 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 $o >> $f 2>&1
  echo "decode $run $(tail -1 $f | grep -oE '"decode_tok_s_b1":[0-9.]*|"same_tokens":[a-z]*|rror.*' | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
