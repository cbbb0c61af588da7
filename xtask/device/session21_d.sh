#!/bin/bash
# Session 21, call 7: NEW (dev12 = main + the split-row decode attention) against OLD (dev10).
#  1. gpu-check of NEW, only the GQA attention group (three T = 1 shapes: forward and gradients
#     from the kernels' p, against the CPU) and the greedy-decode fixtures (`--only gqa,decode`);
#  2. batch-1 decode in separate processes, NEW, OLD, NEW;
#  3. the squad user path (16 batched generations) with NEW: predictions against call 5's OLD
#     ones (not carried: printed EM/F1 only).
#   carry [".device"] with bin/xtask_dev12.xz, bin/xtask_dev10.xz, data/; source stash.sh first,
#   then BUDGET=150 bash xtask/device/session21_d.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:-dev12} OLD=${OLD:-dev10}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-150} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 /tmp/xtask_$NEW bench gpu-check --steps 2 --only gqa,decode > $OUT/gpucheck_$NEW.txt 2>&1
echo "gpu-check $NEW exit $?"
grep -E '"ok":false|"check":"failed"|skipped|panicked|rror' $OUT/gpucheck_$NEW.txt | cut -c1-300 | head -8
grep -E 'attention GQA' $OUT/gpucheck_$NEW.txt | grep -E 'T 1,' | cut -c1-240
for b in $NEW $OLD $NEW; do
  fits 15 "decode $b" || continue
  timeout 40 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 >> $OUT/decode_$b.txt 2>&1
  echo "decode $b $(tail -1 $OUT/decode_$b.txt | grep -oE '"(decode_tok_s_b1)":[0-9.]*|"same_tokens":[a-z]*|"decode_prefix_agreeing_no_graph_stepwise":\[[0-9,]*\]|rror.*' | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
