#!/bin/bash
# Session 24, call 2: GPT-J's fused MLP op over dense weights (branch wip/dense-mlp, build NEW)
# against main (OLD): bf16 q,v training (the row of issue 19 at 16,608 against 17,000), two
# rounds each, alternating; NF4 q,v once each (unchanged path); then the full gpu-check of NEW
# (its `mlp` group has the dense checks `mlp_dense_*`); then bf16 prefill/decode of each.
#   carry [".device"] with bin/xtask_$NEW.xz and bin/xtask_$OLD.xz; source stash.sh first, then
#   NEW=dm OLD=head BUDGET=480 bash xtask/device/session24_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?} OLD=${OLD:?}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-480} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
train() { # build, quant:targets, round
  local bin=$1 c=$2 r=$3
  fits 25 "$bin $c $r" || return
  local f=$OUT/train_${bin}_${c//:/_}_$r.txt
  timeout 60 /tmp/xtask_$bin bench train --model gptj-6b --quant ${c%:*} --targets ${c#*:} --warmup 3 --steps 8 \
    --decode 0 > $f 2>&1
  echo "$bin $c r$r $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*|panicked.*' $f | tr '\n' ' ') $(grep -oE '"loss":[0-9.]*' $f | tail -1)"
}
for r in 1 2; do
  train $OLD bf16:qv $r
  train $NEW bf16:qv $r
done
train $OLD nf4:qv 1
train $NEW nf4:qv 1
fits 170 "gpu-check" && bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 180 && \
  grep -oE '"mlp_dense[a-z_]*":[0-9.e-]*' $OUT/gpucheck_$NEW.txt | tr '\n' ' '; echo
for b in $OLD $NEW; do
  fits 45 "bf16 decode $b" || continue
  timeout 75 /tmp/xtask_$b bench train --model gptj-6b --quant bf16 --targets qv --warmup 0 --steps 0 \
    --decode 128 > $OUT/decode_bf16_$b.txt 2>&1
  echo "bf16 decode $b $(grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|rror.*|panicked.*' $OUT/decode_bf16_$b.txt | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
