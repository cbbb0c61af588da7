#!/bin/bash
# Session 22, call 3: the cross-entropy backward written over its logits (NEW) against main
# (OLD). The head's loss chunks then hold one [rows, vocab] buffer instead of two, so the
# chunk's page is the one the block forward's MLP left free, and the MLP backward's second
# 128 MiB page is no longer allocated beside a slightly too small one (call 2's pool report).
#  1. gpu-check of NEW, groups head and fused (the in-place backward bit-identical);
#  2. GPT-J-6B NF4 q,v kept and parked, bf16 q,v: tokens/s, peak in use, reserved, NEW and OLD;
#  3. the pool report of NEW (session22_c.sh).
#   carry [".device"] with bin/xtask_$NEW.xz, bin/xtask_$OLD.xz; source stash.sh first, then
#   NEW=ce OLD=main BUDGET=200 bash xtask/device/session22_d.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the new build} OLD=${OLD:?OLD=the main build}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-200} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 90 /tmp/xtask_$NEW bench gpu-check --steps 2 --only head,fused > $OUT/gpucheck_$NEW.txt 2>&1
echo "gpu-check $NEW exit $?"
grep -E '"check":"failed"|panicked|rror|FAIL' $OUT/gpucheck_$NEW.txt | cut -c1-300 | head -8
grep -E 'in_place|head_linear' $OUT/gpucheck_$NEW.txt | cut -c1-300
for c in nf4:qv nf4:qv@offload bf16:qv; do
  for b in $NEW $OLD; do
    fits 15 "$c $b" || continue
    m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
    f=$OUT/train_${b}_${c//[:@]/_}.txt
    timeout 60 /tmp/xtask_$b bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 \
      --steps 8 --decode 0 $o > $f 2>&1
    echo "$c $b $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
    grep -oE '"loss":[0-9.]*' $f | head -4 | tr '\n' ' '; echo
  done
done
fits 20 "pool report" && NEW=$NEW bash xtask/device/session22_c.sh
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
