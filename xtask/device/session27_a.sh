#!/bin/bash
# Session 27's first call: the prefetch (the next block's weights dequantized on a second
# stream during this block, `QTUNE_PREFETCH`) checked and timed, and where the NF4 prefill's
# time goes (`bench dequant --prefill`: one GPT-J-6B block's pieces timed alone).
# Builds (`CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p xtask --features
# cuda,xtask/host-profile`, stripped, `xz -6`): .device/bin/xtask_pf.xz = main as session 26
# left it (2808628), .device/bin/xtask_ah.xz = b881028 + 3d08adf (the prefetch, reverted on main
# after this call: no faster).
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=560 bash xtask/device/session27_a.sh
set -uo pipefail
source xtask/device/common.sh
bash xtask/device/unpack.sh xtask_pf || exit 1
bash xtask/device/unpack.sh xtask_ah || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
show() { grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/$1.txt; }
pre() { grep -oE '"(prefill_tok_s|prefill_tok_s_no_prefetch|prefill_same_logits_no_prefetch|decode_tok_s_b1)":[a-z0-9.]*' $OUT/$1.txt | tr '\n' ' '; echo; }
# 1. Correctness first: the prefetch's logits = without it (tiny GPT-J and Llama, NF4), the
#    checks of what it touches (decode paths, the Llama family, the fixtures), and the fused
#    row kernels (their loads are now one fn with the few-row norms').
if fits 110 "gpu-check"; then
  timed check ah 150 bench gpu-check --steps 10 --only fused,ahead,decode,llama_family,fixtures
  grep -E '"check":"(prefetch|failed|greedy_decode)"' $OUT/check.txt | cut -c1-220
  tail -2 $OUT/check.txt | cut -c1-300
fi
# 2. The whole prefill, 1 x 512 NF4: the prefetch build times it with and without the prefetch
#    (alternated in one process, logits compared), then session 26's main as a baseline.
if fits 80 "whole prefill ah"; then
  timed whole_ah ah 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8
  pre whole_ah
fi
if fits 80 "whole prefill main"; then
  timed whole_pf pf 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8
  pre whole_pf
fi
# 3. The prefill's pieces at 512 rows, then at 4096 (training's rows).
fits 70 "pieces 512" && { timed pieces_512 pf 90 bench dequant --prefill --tokens 512; show pieces_512; }
fits 80 "pieces 4096" && { timed pieces_4096 pf 100 bench dequant --prefill --tokens 4096; show pieces_4096; }
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
