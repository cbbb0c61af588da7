#!/bin/bash
# Session 26, call 3: where the NF4 prefill's 18 ms go (nsys is not on the image): the pieces of
# one GPT-J-6B prefill block timed alone (`bench dequant --prefill`: per weight shape the
# dequantization, the GEMM and the quantized linear; q/k/v as one batched GEMM against three;
# attention, LayerNorm, the LM head), at 512 rows and at 4096 (training's rows, for the GEMMs'
# efficiency), and the whole prefill in the same call for the sum to be compared with (after the
# 512-row pieces, before the 4096-row ones).
#   carry [".device"] with bin/xtask_pf.xz; source stash.sh first, then
#   BUDGET=300 bash xtask/device/session26_c.sh (WHOLE=0: without the whole prefill)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
X=/tmp/xtask_pf
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-300} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_pf || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in 512; do
  fits 60 "prefill pieces $t" || continue
  timeout 90 $X bench dequant --prefill --tokens $t > $OUT/prefill_pieces_$t.txt 2>&1
  echo "pieces $t exit $?"
  grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/prefill_pieces_$t.txt
  grep -E 'panicked|rror' $OUT/prefill_pieces_$t.txt | head -3
done
if [ "${WHOLE:-1}" = 1 ] && fits 60 "whole prefill"; then
  timeout 80 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 2 \
    > $OUT/prefill_whole.txt 2>&1
  echo "whole $(grep -oE '"(prefill_tok_s|prefill_s)":[0-9.]*|rror.*|panicked.*' $OUT/prefill_whole.txt | tr '\n' ' ')"
fi
for t in 4096; do
  fits 60 "prefill pieces $t" || continue
  timeout 90 $X bench dequant --prefill --tokens $t > $OUT/prefill_pieces_$t.txt 2>&1
  echo "pieces $t exit $?"
  grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/prefill_pieces_$t.txt
  grep -E 'panicked|rror' $OUT/prefill_pieces_$t.txt | head -3
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
