#!/bin/bash
# Session 22, call 8 (session22_g.sh in the order the remaining device time allows): main with
# the hybrid pool as the default (NEW = fin). Ours first (issue 19's training rows, decode and
# prefill), then the full gpu-check under the default pool, then the peer's NF4 q,v (same call),
# then the 134.16 MB reserve count of OLD against NEW (the in-place cross-entropy backward).
#   carry [".device"] with bin/xtask_$NEW.xz, bin/xtask_$OLD.xz, site/, peer_hf.py; source
#   stash.sh first, then NEW=fin OLD=main BUDGET=480 bash xtask/device/session22_h.sh
#   (ROWS: the training rows; DECODE=0 skips decode)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
NEW=${NEW:?} OLD=${OLD:?}
X=/tmp/xtask_$NEW
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-480} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for c in ${ROWS:-nf4:qv nf4:qv@offload bf16:qv int8-blockwise:qv nf4:all}; do
  fits 20 "ours $c" || continue
  m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
  f=$OUT/ours_${c//[:@]/_}.txt
  timeout 60 $X bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 --steps 8 \
    --decode 0 $o > $f 2>&1
  echo "ours $c $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib|cubecl_cuda_memory)":("[^"]*"|[0-9.]*)|rror.*' $f | tr '\n' ' ')"
done
if [ "${DECODE:-1}" = 1 ] && fits 30 "ours decode"; then
  timeout 60 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
    > $OUT/ours_decode.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|"same_tokens":[a-z]*|rror.*' $OUT/ours_decode.txt | tr '\n' ' '; echo
fi
fits 170 "gpu-check" && bash xtask/device/gpu_check.sh $X $NEW 180 && \
  grep -oE '"[a-z0-9_]*(gqa|t1)[a-z0-9_]*":[a-z0-9.e-]*' $OUT/gpucheck_$NEW.txt | head -12 | tr '\n' ' '; echo
[ -d /tmp/gptj-random ] || { fits 90 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
if [ -d /tmp/gptj-random ] && fits 75 "peer nf4"; then
  timeout 110 python3 .device/peer_hf.py train nf4 > $OUT/peer_nf4.txt 2>&1
  grep -E '^\{|Error' $OUT/peer_nf4.txt | cut -c1-400 | head -3
fi
mkdir -p /tmp/memlog2 && cd /tmp/memlog2
printf '[memory.logger]\nlevel = "full"\nfile = "/tmp/memlog2/mem.log"\nappend = false\n' > cubecl.toml
for b in $OLD $NEW; do
  fits 12 "log $b" || continue
  rm -f mem.log
  timeout 20 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 1 --steps 1 \
    --decode 0 > run_$b.txt 2>&1
  echo "log $b exit $? reserves of 134.16 MB: $(grep -c 'Reserved memory 134.16 MB' mem.log)"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
