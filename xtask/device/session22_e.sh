#!/bin/bash
# Session 22, call 4: pools that let transients of different sizes share pages. Call 2's pool
# report showed the reservation's gap over in use is pages of one size class idle while
# another class is busy (three 128 MiB pages idle during attention, three 64 MiB ones during
# the MLP); exclusive pages cannot be shared across sizes. `CUBECL_CUDA_MEMORY=hybrid:L:P`
# (build NEW) keeps the exclusive classes up to L MiB and puts everything from there to P MiB
# in sliced pages of P MiB. GPT-J-6B NF4 q,v kept and parked and bf16 q,v under each setting:
# tokens/s, peak in use, reserved; then decode and the park/decode checks under the best guess.
#   carry [".device"] with bin/xtask_$NEW.xz; source stash.sh first, then
#   NEW=hy BUDGET=300 bash xtask/device/session22_e.sh (MEMS, DECODE_MEMS, CHECK_MEM: the settings)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the build}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-300} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
for c in nf4:qv@offload nf4:qv bf16:qv; do
  for mem in ${MEMS:-exclusive hybrid:16:256 hybrid:16:512 hybrid:4:256 hybrid:1:128}; do
    fits 15 "$c $mem" || continue
    m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
    f=$OUT/train_${c//[:@]/_}_${mem//:/_}.txt
    CUBECL_CUDA_MEMORY=$mem timeout 60 /tmp/xtask_$NEW bench train --model gptj-6b --quant ${m%:*} \
      --targets ${m#*:} --warmup 3 --steps 8 --decode 0 $o > $f 2>&1
    echo "$c $mem $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ') $(grep -oE '"loss":[0-9.]*' $f | tail -1)"
  done
done
for mem in ${DECODE_MEMS:-exclusive hybrid:16:256}; do
  fits 20 "decode $mem" || continue
  CUBECL_CUDA_MEMORY=$mem timeout 40 /tmp/xtask_$NEW bench train --model gptj-6b --quant nf4 --targets qv \
    --warmup 0 --steps 0 --decode 128 > $OUT/decode_${mem//:/_}.txt 2>&1
  echo "decode $mem $(tail -1 $OUT/decode_${mem//:/_}.txt | grep -oE '"decode_tok_s_b1":[0-9.]*|"same_tokens":[a-z]*|rror.*' | tr '\n' ' ')"
done
if fits 40 "gpu-check park,decode,fixtures"; then
  CUBECL_CUDA_MEMORY=${CHECK_MEM:-hybrid:16:256} timeout 60 /tmp/xtask_$NEW bench gpu-check --steps 2 --only park,decode,fixtures > $OUT/gpucheck_hybrid.txt 2>&1
  echo "gpu-check hybrid exit $?"; grep -E '"check":"failed"|panicked|rror|FAIL' $OUT/gpucheck_hybrid.txt | cut -c1-300 | head -8
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
