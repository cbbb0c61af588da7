#!/bin/bash
# Session 21, call 3: issue 19's table on one binary (NEW = dev10: main with LoRA's q/v products
# in one pair of launches) and the peer in the same call.
#  1. ours: GPT-J-6B 8 × 512, LoRA r 16: NF4 q,v kept and parked, bf16 q,v, blockwise 8-bit q,v,
#     NF4 all-linear kept and parked; batch-1 prefill + decode (1-step graphs) with the decode
#     step's pieces (--decode-profile); the batch-1 products and dequant bandwidth
#     (`bench dequant --decode`);
#  2. the peer (HF transformers + PEFT + bitsandbytes, peer_hf.py): nf4 q,v (train, prefill,
#     decode), bf16, int8, nf4 all-linear, and its dequant bandwidth;
#  3. gpu-check of NEW (last: the lines after session 21's check fix).
#   carry [".device"] with bin/xtask_dev10.xz, site/ (bitsandbytes), peer_hf.py; source stash.sh
#   first, then BUDGET=570 bash xtask/device/session21_b.sh (timeout 595)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
NEW=${NEW:-dev10}
X=/tmp/xtask_$NEW
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-570} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for c in nf4:qv nf4:qv@offload bf16:qv int8-blockwise:qv nf4:all nf4:all@offload; do
  fits 20 "ours $c" || continue
  m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
  f=$OUT/ours_${c//[:@]/_}.txt
  timeout 60 $X bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 --steps 8 \
    --decode 0 $o > $f 2>&1
  echo "ours $c $(grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
done
if fits 40 "ours decode"; then
  timeout 80 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
    --decode-profile > $OUT/ours_decode.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_graph_steps)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $OUT/ours_decode.txt | tr '\n' ' '; echo
  grep decode_piece $OUT/ours_decode.txt | sed 's/"mode":"nf4-qv",//' | cut -c1-160
fi
if fits 30 "ours dequant"; then
  timeout 60 $X bench dequant --decode --iters 20 > $OUT/ours_dequant.txt 2>&1
  grep -E '"bench"' $OUT/ours_dequant.txt | cut -c1-220 | head -24
fi
[ -d /tmp/gptj-random ] || { fits 60 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
for m in nf4 bf16 int8 nf4-all; do
  fits 75 "peer $m" || continue
  echo "=== peer $m $(date -u +%T)"
  timeout 110 python3 .device/peer_hf.py train $m > $OUT/peer_$m.txt 2>&1
  grep -E '^\{|Error' $OUT/peer_$m.txt | cut -c1-400 | head -3
done
if fits 25 "peer dequant"; then
  timeout 40 python3 .device/peer_hf.py dequant 2>&1 | grep -E '^\{|Error' | cut -c1-600
fi
fits 150 "gpu-check" && bash xtask/device/gpu_check.sh $X $NEW 170 && \
  grep -oE '"(lora_parts|dense_gemv)[a-z0-9_]*":[a-z0-9.e-]*' $OUT/gpucheck_$NEW.txt | tr '\n' ' '; echo
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
