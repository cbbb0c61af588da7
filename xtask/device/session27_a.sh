#!/bin/bash
# The next session's first call (session 26 built it and had no device time left for it): where
# the NF4 prefill's ~17.9 ms go, one GPT-J-6B block's pieces timed alone (`bench dequant
# --prefill`: per weight shape the dequantization, the bf16 GEMM and the quantized linear; q/k/v
# as one strided-batched GEMM against three GEMMs; attention, LayerNorm, the LM head's GEMM) at
# 512 rows, then at 4096 (training's rows: the GEMMs' efficiency at full tiles), then the whole
# prefill in the same call. Session 26's run of this bench panicked in its own code (dad45d1
# fixed it).
# Build: `CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p xtask --features
# cuda,xtask/host-profile` of main, stripped, `xz -6` into .device/bin/xtask_pf.xz.
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=200 bash xtask/device/session27_a.sh
set -uo pipefail
source xtask/device/common.sh
bash xtask/device/unpack.sh xtask_pf || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
show() { grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/$1.txt; }
fits 60 "pieces 512" && { timed pieces_512 pf 90 bench dequant --prefill --tokens 512; show pieces_512; }
if fits 60 "whole prefill"; then
  timed whole pf 80 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 2
  grep -oE '"(prefill_tok_s|prefill_s)":[0-9.]*' $OUT/whole.txt | tr '\n' ' '; echo
fi
fits 70 "pieces 4096" && { timed pieces_4096 pf 100 bench dequant --prefill --tokens 4096; show pieces_4096; }
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
