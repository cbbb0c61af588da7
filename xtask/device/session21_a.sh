#!/bin/bash
# Session 21, call 2: NEW (dev9 = main with LoRA's q/v products in one pair of launches and the
# lane-per-row dense GEMV) against OLD (dev8 = main before it: parts GEMV, 1-step graphs, parking
# of row-padded tensors).
#  1. gpu-check of NEW: every line, including park_round_trip's row-padded third round (parked
#     now), lora_parts_* (bit-identical to each adapter's own lora_acc) and dense_gemv_300x24;
#  2. batch-1 decode in separate processes, NEW, OLD, NEW, OLD (1-step graphs, the default);
#  3. our training rows of issue 19 with NEW: GPT-J-6B 8 × 512, LoRA r 16: NF4 q,v, bf16 q,v,
#     blockwise 8-bit q,v, NF4 all-linear, each kept and parked (--offload).
# The peers of those rows are call 3 (session19_b.sh's second half: PEERS_ONLY=1).
#   carry [".device"] with bin/xtask_dev9.xz, bin/xtask_dev8.xz; source stash.sh first, then
#   BUDGET=560 bash xtask/device/session21_a.sh (timeout 595)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:-dev9} OLD=${OLD:-dev8}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-560} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 200
grep -oE '"(lora_parts|dense_gemv)[a-z0-9_]*":[a-z0-9.e-]*' $OUT/gpucheck_$NEW.txt | tr '\n' ' '; echo
grep -E '"check":"park_round_trip"' $OUT/gpucheck_$NEW.txt | cut -c1-200
for b in $NEW $OLD $NEW $OLD; do
  fits 40 "decode $b" || continue
  echo "=== decode $b $(date -u +%T)"
  timeout 80 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 >> $OUT/decode_$b.txt 2>&1
  tail -1 $OUT/decode_$b.txt | grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_graph_steps)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|"same_tokens":[a-z]*|rror.*' \
    | tr '\n' ' '; echo
done
for c in nf4:qv bf16:qv int8-blockwise:qv nf4:all; do
  for o in "" --offload; do
    fits 25 "$c $o" || continue
    f=$OUT/ours_${c/:/_}${o}.txt
    timeout 60 /tmp/xtask_$NEW bench train --model gptj-6b --quant ${c%:*} --targets ${c#*:} --warmup 3 \
      --steps 8 --decode 0 $o > $f 2>&1
    echo "$c $o $(grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
  done
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
