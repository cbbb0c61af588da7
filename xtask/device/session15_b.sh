#!/bin/bash
# Session 15, call 2: where the GPT-J-6B NF4 q,v training step goes (ncu over two blocks, summed
# by kernel class), the dequant bandwidth of issue 19's table (`bench dequant`), and batch-1 decode
# in two processes back to back with the GPU's clocks and throttle reasons printed before each
# (the slow first decode). Parts run in that order while BUDGET seconds (default 420) allow.
#   carry [".device"] with bin/xtask.gz; source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-420} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
X=/tmp/xtask
clocks() { nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader; }
clocks
echo "=== ncu gptj-6b q,v 2 blocks $(date -u +%T)"
timeout ${T_NCU:-200} /usr/local/cuda/bin/ncu --csv --print-units base --metrics gpu__time_duration.sum \
  --log-file /tmp/ncu.csv $X bench train --model gptj-6b --quant nf4 --targets qv --layers 2 \
  --warmup 1 --steps 1 --decode 0 > /tmp/ncu_app.txt 2>&1
echo "ncu exit $?"; tail -2 /tmp/ncu_app.txt | cut -c1-300
python3 xtask/device/kernel_profile.py /tmp/ncu.csv 50 | tee $OUT/ncu_summary.txt
gzip -c /tmp/ncu.csv > $OUT/ncu.csv.gz
if fits 100 "bench dequant"; then
  echo "=== dequant $(date -u +%T)"
  timeout 120 $X bench dequant > $OUT/dequant.txt 2>&1
  grep -E '"dequant"|"copy"|rror' $OUT/dequant.txt | cut -c1-200 | head -30
fi
for i in 1 2; do
  if fits 40 "decode $i"; then
    clocks
    echo "=== decode b1 run $i $(date -u +%T)"
    timeout 60 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
      > $OUT/decode_$i.txt 2>&1
    grep -oE '"decode_tok_s_b1[^,]*|"decode_ms_per_token_steady[^]]*|"prefill_tok_s[^,]*|rror.*' $OUT/decode_$i.txt | head -6
  fi
done
clocks
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
