#!/bin/bash
# The second call, once session29_a.sh has passed a kernel: issue 19's inference rows with the
# peer in the same call, the Triton kernels on with the configs that call picked, and off for
# the A/B in the same process kind:
#  1. ours: prefill 1 × 512 and decode 128 tokens, kernels on, twice; kernels off, once;
#  2. ours: NF4 q,v training (8 × 512) with the kernels on (training takes neither; a check that
#     nothing moved);
#  3. the peer: prepare the random GPT-J-6B, then `peer_hf.py train nf4` (its q,v training,
#     prefill and decode).
# Build: .device/bin/xtask.xz as for session29_a.sh; also .device/site (bitsandbytes, see
# shared/notes/gpu.md) and .device/peer_hf.py (shared/bench/peer_hf.py).
#   carry [".device"]; source xtask/device/stash.sh first, then
#   GEMM=1 GEMM_CFG=c ATTN=1 ATTN_CFG=f BUDGET=540 bash xtask/device/session29_b.sh
# (GEMM=0 or ATTN=0 leaves a kernel that did not pass off.)
set -uo pipefail
source xtask/device/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export QTUNE_NF4_GEMM_CFG=${GEMM_CFG:-0} QTUNE_FLASH_ATTN_CFG=${ATTN_CFG:-0}
echo "on: QTUNE_NF4_GEMM=${GEMM:-1} cfg $QTUNE_NF4_GEMM_CFG, QTUNE_FLASH_ATTN=${ATTN:-1} cfg $QTUNE_FLASH_ATTN_CFG"
dec() { grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_ms_per_token_steady|decode_prefix_agreeing_no_graph_stepwise)":(\[[0-9.,]*|[0-9.]*)' $OUT/$1.txt | tr '\n' ' '; echo; }
for run in on_1 off on_2; do
  fits 45 "ours decode $run" || continue
  if [ $run = off ]; then g=0 a=0; else g=${GEMM:-1} a=${ATTN:-1}; fi
  QTUNE_NF4_GEMM=$g QTUNE_FLASH_ATTN=$a timed decode_$run xtask 75 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128
  echo -n "ours decode $run: "; dec decode_$run
done
if fits 60 "ours nf4:qv"; then
  QTUNE_NF4_GEMM=${GEMM:-1} QTUNE_FLASH_ATTN=${ATTN:-1} timed train xtask 75 bench train --model gptj-6b --quant nf4 --targets qv --warmup 3 --steps 8 --decode 0
  echo "ours nf4:qv $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*' $OUT/train.txt | tr '\n' ' ')"
fi
[ -d /tmp/gptj-random ] || { fits 200 "peer prepare" && timeout 120 python3 .device/peer_hf.py prepare 2>&1 | tail -1; }
if [ -d /tmp/gptj-random ] && fits 120 "peer nf4"; then
  timeout 170 python3 .device/peer_hf.py train nf4 > $OUT/peer_nf4.txt 2>&1
  echo "peer nf4 $(grep -E '^\{|Error' $OUT/peer_nf4.txt | grep -oE '"(tokens_per_s|peak_gib|prefill512_tok_s|decode_tok_s_b1)": ?[0-9.]*|Error.*' | tr '\n' ' ')"
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
