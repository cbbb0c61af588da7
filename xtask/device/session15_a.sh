#!/bin/bash
# Session 15, call 1: the quantized GEMV at each depth (code vectors in flight per lane); the
# three batched greedy paths on 128 SQuAD prompts (graphs now with one batched GEMM node per
# attention product); the evaluation's batched generation (eager static-shape path) against the
# peer on the same 500 prompts, with a host profile; batch-1 decode at depth 2 and 8; gpu-check;
# where a 32-row step goes (nsys when the machine has it). Parts run in that order while BUDGET
# seconds (default 480) allow their expected length.
#   carry [".device"] with bin/xtask.gz; source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site QTUNE_DATA_DIR=/tmp/data HF_HUB_OFFLINE=1
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-480} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
nvidia-smi --query-gpu=name --format=csv,noheader
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
X=/tmp/xtask
echo "=== gemv depths $(date -u +%T)"
timeout 90 $X bench dequant --decode > $OUT/gemv.txt 2>&1
grep -E '"gemv"|rror|panicked' $OUT/gemv.txt | grep -E 'nf4|int8|rror|panicked' | cut -c1-200
if fits 100 "paths 128"; then
  echo "=== paths 128 $(date -u +%T)"
  timeout 130 $X bench generate --prompts 128 --batch 32 --new-tokens 32 --fixed-paths > $OUT/paths.txt 2>&1
  grep -E '"bench"|rror|panicked' $OUT/paths.txt | cut -c1-400
fi
if fits 120 "ours 500"; then
  echo "=== ours 500 $(date -u +%T)"
  timeout 150 $X bench generate --prompts 500 --batch 32 --new-tokens 32 --export /tmp/gen_b32.json \
    --host-profile > $OUT/gen500.txt 2>&1
  grep -E '"bench"|rror|panicked' $OUT/gen500.txt | cut -c1-600
  grep '"host_profile"' $OUT/gen500.txt | head -25 | cut -c1-170
fi
if [ -f /tmp/gen_b32.json ] && fits 150 "peer generate"; then
  echo "=== peer $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 150 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 120 python3 xtask/device/peer_generate.py /tmp/gen_b32.json 2>&1 | grep -E '^\{|Error' | tee -a $OUT/generate.txt
fi
for d in ${DEPTHS:-2 8}; do
  if fits 60 "decode depth $d"; then
    echo "=== decode b1 depth $d $(date -u +%T)"
    QTUNE_GEMV_DEPTH=$d timeout 90 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
      --steps 0 --decode 128 > $OUT/decode_d$d.txt 2>&1
    grep -iE 'decode|rror|panicked' $OUT/decode_d$d.txt | head -8 | cut -c1-400
  fi
done
if fits 160 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 170 $X bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -E 'quantized_gemv' $OUT/gpucheck.txt | cut -c1-600
fi
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}"
if [ -n "$NSYS" ] && fits 90 "nsys 64 prompts"; then
  echo "=== nsys $(date -u +%T)"
  timeout 120 $NSYS profile -o /tmp/gen -t cuda --force-overwrite true $X bench generate --prompts 64 \
    --batch 32 --new-tokens 32 > /tmp/nsys_app.txt 2>&1
  echo "nsys exit $?"; grep '"bench"' /tmp/nsys_app.txt | cut -c1-300
  timeout 60 $NSYS stats -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o /tmp/gen_stats /tmp/gen.nsys-rep > /dev/null 2>&1
  for f in /tmp/gen_stats*.csv; do echo "-- $f"; head -30 "$f" | cut -c1-220; cp "$f" $OUT/; done
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
