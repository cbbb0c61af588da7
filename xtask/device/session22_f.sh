#!/bin/bash
# Session 22, call 6: the pool settings of call 4–5 on other shapes: Llama-2-7B NF4 q,v (its
# MLP's 90 MB transients do not fill a 128 MiB page), GPT-J-6B NF4 all-linear, and GPT-J-6B
# NF4 q,v parked at 2 × 2048 (long sequences). Each line: tokens/s, peak in use, reserved.
#   carry [".device"] with bin/xtask_$NEW.xz; source stash.sh first, then
#   NEW=hy BUDGET=300 bash xtask/device/session22_f.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the build}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-300} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
run() { # name, settings, args...
  local name=$1 mems=$2; shift 2
  for mem in $mems; do
    fits 20 "$name $mem" || continue
    f=$OUT/f_${name}_${mem//:/_}.txt
    CUBECL_CUDA_MEMORY=$mem timeout 90 /tmp/xtask_$NEW bench train --warmup 3 --steps 6 --decode 0 "$@" > $f 2>&1
    echo "$name $mem $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ') $(grep -oE '"loss":[0-9.]*' $f | tail -1)"
  done
}
# MEMS overrides every shape's settings (call 7: larger pages).
run llama7b_nf4_qv "${MEMS:-exclusive hybrid:1:128 hybrid:34:128 hybrid:1:256}" --model llama-7b --quant nf4 --targets qv
run gptj_nf4_all "${MEMS:-exclusive hybrid:1:128 hybrid:34:128}" --model gptj-6b --quant nf4 --targets all
run gptj_nf4_qv_2048_offload "${MEMS:-exclusive hybrid:1:128 hybrid:34:128}" --model gptj-6b --quant nf4 --targets qv --seq 2048 --batch 2 --offload
if [ -n "${MEMS:-}" ]; then
  run gptj_nf4_qv_offload "$MEMS" --model gptj-6b --quant nf4 --targets qv --offload
  run gptj_nf4_qv "$MEMS" --model gptj-6b --quant nf4 --targets qv
  run gptj_bf16_qv "$MEMS" --model gptj-6b --quant bf16 --targets qv
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
