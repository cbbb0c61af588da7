#!/bin/bash
# Session 24, call 1: the GEMV prefetch (branch wip/gemv-prefetch, build NEW) against main
# (OLD), then what session 22's last call left unrun on main's default pool `hybrid:1:128`.
# In order: `bench dequant --decode` of NEW (every rows-per-plane setting without and with the
# prefetch, `pf`); decode of OLD, of NEW and of NEW with `--no-gemv-prefetch`; the full
# gpu-check of NEW (which requires `gemv_*_pf_bit_identical_to_plain`); bf16 prefill and decode
# (how much of NF4's prefill is dequantization); issue 19's training
# rows on NEW; the peer's NF4 q,v and bf16 q,v (same call).
#   carry [".device"] with bin/xtask_$NEW.xz, bin/xtask_$OLD.xz, site/, peer_hf.py; source
#   stash.sh first, then NEW=pf OLD=head BUDGET=560 bash xtask/device/session24_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
NEW=${NEW:?} OLD=${OLD:?}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-560} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if fits 60 "gemv bench"; then
  timeout 90 /tmp/xtask_$NEW bench dequant --decode --iters 20 > $OUT/gemv_$NEW.txt 2>&1
  echo "gemv bench exit $?"
  grep -E '"kind":"gemv"' $OUT/gemv_$NEW.txt | grep -oE '"name":"[^"]*"|"us":[0-9.]*' | paste -d' ' - - | tr '\n' ';'; echo
  grep -E 'panicked|rror' $OUT/gemv_$NEW.txt | head -3
fi
decode() { # name, binary, quant, args...
  local name=$1 bin=$2 quant=$3; shift 3
  fits 45 "decode $name" || return
  timeout 75 /tmp/xtask_$bin bench train --model gptj-6b --quant $quant --targets qv --warmup 0 --steps 0 \
    --decode 128 "$@" > $OUT/decode_$name.txt 2>&1
  echo "decode $name $(grep -oE '"(prefill_tok_s|decode_tok_s_b1|gemv_prefetch)":[0-9.a-z]*|rror.*|panicked.*' $OUT/decode_$name.txt | tr '\n' ' ')"
}
decode old $OLD nf4
decode new $NEW nf4
decode new_plain $NEW nf4 --no-gemv-prefetch
decode new2 $NEW nf4
# Prefill without dequantization: how much of the NF4 prefill's time is the dequant.
decode bf16 $NEW bf16
fits 170 "gpu-check" && bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 180 && \
  grep -oE '"gemv_[a-z0-9_]*pf[a-z0-9_]*":[a-z]*' $OUT/gpucheck_$NEW.txt | sort | uniq -c | sort -rn | head -4 | tr '\n' ' '; echo
for c in ${ROWS:-nf4:qv bf16:qv nf4:qv@offload}; do
  fits 25 "ours $c" || continue
  m=${c%@*} o=; [ "$m" = "$c" ] || o=--offload
  f=$OUT/ours_${c//[:@]/_}.txt
  timeout 60 /tmp/xtask_$NEW bench train --model gptj-6b --quant ${m%:*} --targets ${m#*:} --warmup 3 --steps 8 \
    --decode 0 $o > $f 2>&1
  echo "ours $c $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
done
[ -d /tmp/gptj-random ] || { fits 150 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
for m in nf4 bf16; do
  [ -d /tmp/gptj-random ] && fits 75 "peer $m" || continue
  timeout 110 python3 .device/peer_hf.py train $m > $OUT/peer_$m.txt 2>&1
  echo "peer $m $(grep -E '^\{|Error' $OUT/peer_$m.txt | grep -oE '"(tokens_per_s|peak_gib|prefill512_tok_s|decode_tok_s_b1)": ?[0-9.]*|Error.*' | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
