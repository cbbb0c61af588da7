#!/bin/bash
# Session 19, call 2: issue 19's other rows on main's build (= call 1's dev3): GPT-J-6B (8 × 512,
# LoRA r 16) bf16 q,v, blockwise 8-bit q,v and NF4 all-linear, each with the block inputs kept
# and parked (--offload), then the peer's bf16, LLM.int8 and NF4 all-linear in the same call.
#   carry [".device"] with bin/xtask_dev3.xz and site/ (bitsandbytes); source stash.sh first
#   BUDGET=300 bash xtask/device/session19_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
X=${NEW:-dev3}  # NEW=dev5 measures bin/xtask_dev5.xz instead
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-300} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$X || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# PEERS_ONLY=1 skips our rows (session21_a.sh times them); PEERS="bf16 int8 nf4-all nf4" picks the peers.
for c in $([ -n "${PEERS_ONLY:-}" ] || echo bf16:qv int8-blockwise:qv nf4:all); do
  for o in "" --offload; do
    fits 20 "$c $o" || continue
    f=$OUT/ours_${c/:/_}${o}.txt
    timeout 60 /tmp/xtask_$X bench train --model gptj-6b --quant ${c%:*} --targets ${c#*:} --warmup 3 \
      --steps 8 --decode 0 $o > $f 2>&1
    echo "$c $o $(grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
  done
done
[ -d /tmp/gptj-random ] || { fits 40 "peer prepare" && timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
for m in ${PEERS:-bf16 int8 nf4-all}; do
  fits 60 "peer $m" || continue
  echo "=== peer $m $(date -u +%T)"
  timeout 100 python3 .device/peer_hf.py train $m 2>&1 | grep -E '^\{"mode"|Error' | head -1 | tee -a $OUT/peers.txt
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
