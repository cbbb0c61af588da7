#!/bin/bash
# For session 22 (not yet run): is the head's loss chunk the reservation's ~0.56 GiB over in use
# (issue 19's "reserved ≤ in use + 10 %": +11.7 % kept, +13.2 % parked in session 21)?
# GPT-J-6B NF4 q,v 8 × 512, kept and parked, and bf16 q,v, at loss chunks of 2^26 logits (the
# default: 1,331 rows of GPT-J's 50,400), 2^24 (332 rows) and 2^22 (83 rows): peak in use,
# reserved, tokens/s. If a smaller chunk brings reserved within 10 % at the same speed, it
# becomes qtune_lm::LOSS_CHUNK_ELEMS.
#   carry [".device"] with bin/xtask_$NEW.xz (a build of main); source stash.sh first, then
#   NEW=devN BUDGET=200 bash xtask/device/session22_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the build to run}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-200} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
for c in nf4:qv nf4:qv@offload bf16:qv; do
  for n in 67108864 16777216 4194304; do
    fits 15 "$c $n" || continue
    m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
    f=$OUT/chunk_${c//[:@]/_}_$n.txt
    timeout 60 /tmp/xtask_$NEW bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 \
      --steps 8 --decode 0 --loss-chunk-elems $n $o > $f 2>&1
    echo "$c chunk $n $(grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
  done
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
