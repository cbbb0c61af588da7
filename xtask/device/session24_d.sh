#!/bin/bash
# Session 24, call 4: GPT-J's fc_in at decode as one GEMV launch with the bias and gelu_new on
# its f32 sum (build NEW) against main before it (OLD): decode twice each, alternating, then
# the full gpu-check of NEW (`gemv_bias_gelu_*`, the decode fixtures, the MLP checks as the
# refactored helpers build them).
#   carry [".device"] with bin/xtask_$NEW.xz and bin/xtask_$OLD.xz; source stash.sh first, then
#   NEW=g OLD=dm BUDGET=400 bash xtask/device/session24_d.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?} OLD=${OLD:?}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-400} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for r in 1 2; do
  for b in $OLD $NEW; do
    fits 45 "decode $b $r" || continue
    f=$OUT/decode_${b}_$r.txt
    timeout 75 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
      --decode 128 > $f 2>&1
    echo "decode $b r$r $(grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|"decode_ms_per_token_steady":\[[0-9.]*|"decode_prefix_agreeing_no_graph_stepwise":\[[0-9,]*|rror.*|panicked.*' $f | tr '\n' ' ')"
  done
done
fits 170 "gpu-check" && bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 180 && \
  grep -oE '"gemv_bias_gelu_[a-z0-9_]*":[0-9.e-]*' $OUT/gpucheck_$NEW.txt | tr '\n' ' '; echo
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
