#!/bin/bash
# Session 26, call 2: issue 19's decode and prefill rows with the peer in the same call, after
# the session-25 decode stack landed (build `dec2`, the tidied stack = main after it lands):
#  1. ours: decode 128 tokens twice (prefill 1 × 512 with it), NF4 q,v training once;
#  2. the peer: prepare the random GPT-J-6B, then `peer_hf.py train nf4` (q,v training, its
#     prefill and decode);
#  3. where the NF4 prefill's time goes: nsys' kernel summary over `--steps 0 --decode 1`
#     (7 prefills of 1 × 512 and one short decode; the prefills dominate), top kernels back.
#   carry [".device"] with bin/xtask_dec2.xz, site/ (bitsandbytes), peer_hf.py; source stash.sh
#   first, then BUDGET=540 bash xtask/device/session26_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
X=/tmp/xtask_dec2
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_dec2 || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for i in 1 2; do
  fits 45 "ours decode $i" || continue
  timeout 75 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
    > $OUT/ours_decode_$i.txt 2>&1
  echo "ours decode $i $(grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_ms_per_token_steady|decode_prefix_agreeing_no_graph_stepwise)":(\[[0-9.,]*|[0-9.]*)|rror.*|panicked.*' $OUT/ours_decode_$i.txt | tr '\n' ' ')"
done
if fits 60 "ours nf4:qv"; then
  timeout 75 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 3 --steps 8 --decode 0 \
    > /tmp/ours_train.txt 2>&1
  echo "ours nf4:qv $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*|panicked.*' /tmp/ours_train.txt | tr '\n' ' ')"
fi
[ -d /tmp/gptj-random ] || { fits 200 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
if [ -d /tmp/gptj-random ] && fits 120 "peer nf4"; then
  timeout 170 python3 .device/peer_hf.py train nf4 > $OUT/peer_nf4.txt 2>&1
  echo "peer nf4 $(grep -E '^\{|Error' $OUT/peer_nf4.txt | grep -oE '"(tokens_per_s|peak_gib|prefill512_tok_s|decode_tok_s_b1)": ?[0-9.]*|Error.*' | tr '\n' ' ')"
fi
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}"
if [ -n "$NSYS" ] && fits 90 "nsys prefill"; then
  timeout 110 $NSYS profile -o /tmp/prefill --force-overwrite true -t cuda --stats=false \
    $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 1 > /tmp/nsys_run.txt 2>&1
  echo "nsys exit $?"
  timeout 60 $NSYS stats -r cuda_gpu_kern_sum -f csv -o /tmp/kern /tmp/prefill.nsys-rep > /dev/null 2>&1
  ls /tmp/kern* 2>/dev/null | head -3
  f=$(ls /tmp/kern*.csv 2>/dev/null | head -1)
  [ -n "$f" ] && cp "$f" $OUT/prefill_kern_sum.csv && python3 - "$f" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print(f"kernels total {tot/1e6:.1f} ms over {sum(int(r['Instances']) for r in rows)} launches")
for r in rows[:22]:
    print(f'{float(r["Time (%)"]):5.1f}% {float(r["Total Time (ns)"])/1e6:8.2f} ms {int(r["Instances"]):6d}x {r["Name"][:110]}')
PY
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
