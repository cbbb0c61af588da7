#!/bin/bash
# Session 24, call 3: issue 19's table on main after the dense fused MLP (NEW = dm, 7dba1a1),
# the peer in the same call: ours (NF4 q,v kept and parked, bf16 q,v twice, 8-bit q,v, NF4
# all-linear; prefill and decode), then the peer's NF4 q,v, bf16 q,v, LLM.int8 q,v and NF4
# all-linear (each with its prefill and decode).
#   carry [".device"] with bin/xtask_$NEW.xz, site/, peer_hf.py; source stash.sh first, then
#   NEW=dm BUDGET=540 bash xtask/device/session24_c.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
NEW=${NEW:?}
X=/tmp/xtask_$NEW
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
i=0
for c in ${ROWS:-nf4:qv nf4:qv@offload bf16:qv int8-blockwise:qv nf4:all bf16:qv}; do
  i=$((i + 1))
  fits 25 "ours $c" || continue
  m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
  f=/tmp/ours_${i}_${c//[:@]/_}.txt
  timeout 60 $X bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 --steps 8 \
    --decode 0 $o > $f 2>&1
  echo "ours $c $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*|panicked.*' $f | tr '\n' ' ')"
done
if fits 45 "ours decode"; then
  timeout 75 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
    > $OUT/ours_decode.txt 2>&1
  echo "ours decode $(grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|rror.*|panicked.*' $OUT/ours_decode.txt | tr '\n' ' ')"
fi
[ -d /tmp/gptj-random ] || { fits 100 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
for m in nf4 bf16 int8 nf4-all; do
  [ -d /tmp/gptj-random ] && fits 100 "peer $m" || continue
  timeout 150 python3 .device/peer_hf.py train $m > $OUT/peer_$m.txt 2>&1
  echo "peer $m $(grep -E '^\{|Error' $OUT/peer_$m.txt | grep -oE '"(tokens_per_s|peak_gib|prefill512_tok_s|decode_tok_s_b1)": ?[0-9.]*|Error.*' | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
