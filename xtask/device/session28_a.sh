#!/bin/bash
# Session 28's first call: the fused NF4 GEMM (Triton PTX, `crates/kernels/src/cuda/nf4_gemm.rs`)
# checked against dequantize + cuBLAS (gpu-check `nf4_gemm`, every shipped config), timed piece
# by piece at 512 rows beside the unfused path (`bench dequant --prefill`), then the whole
# GPT-J-6B NF4 prefill with it off (the default), with config 0 and with the config fastest in
# the pieces (`QTUNE_NF4_GEMM=1`).
# Build: .device/bin/xtask.xz (`CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p xtask
# --features cuda,xtask/host-profile`, stripped, `xz -6`) of this tree.
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=560 bash xtask/device/session28_a.sh
set -uo pipefail
source xtask/device/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
show() { grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/$1.txt; }
pre() { grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[a-z0-9.]*' $OUT/$1.txt | tr '\n' ' '; echo; }
if fits 100 "gpu-check"; then
  timed check xtask 150 bench gpu-check --steps 10 --only nf4_gemm,mlp
  grep -E 'nf4_gemm|unavailable|failed|beyond' $OUT/check.txt | cut -c1-400
  tail -2 $OUT/check.txt | cut -c1-300
fi
fits 60 "pieces 512" && { timed pieces_512 xtask 100 bench dequant --prefill --tokens 512; show pieces_512 | grep -E 'q_linear|gemm [0-9]|dequant'; }
# The config whose three linears (4 × 4096², fc_in, fc_out per block) sum fastest, among those
# that ran and stayed within 1e-2 of the unfused product.
best=$(python3 - $OUT/pieces_512.txt <<'PY'
import json, re, sys
t = {}
for ln in open(sys.argv[1]):
    m = re.search(r'"name":"q_linear fused c(\d+) (\S+) \(err ([^,]+), fused\)', ln)
    if m and float(m.group(3)) <= 1e-2:  # ran, and within the check's tolerance
        c, shape = int(m.group(1)), m.group(2)
        t.setdefault(c, {})[shape] = json.loads(ln)["ms"]
w = {"4096->4096": 4, "4096->16384": 1, "16384->4096": 1}
tot = {c: sum(w[s] * v for s, v in d.items()) for c, d in t.items() if len(d) == 3}
print(min(tot, key=tot.get) if tot else 0)
for c in sorted(tot):
    print(f"config {c}: {tot[c]:.4f} ms per block", file=sys.stderr)
PY
)
echo "best config: $best"
if fits 60 "whole prefill off"; then
  QTUNE_NF4_GEMM=0 timed whole_off xtask 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8; pre whole_off
fi
if fits 60 "whole prefill best"; then
  QTUNE_NF4_GEMM=1 QTUNE_NF4_GEMM_CFG=$best timed whole_best xtask 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8; pre whole_best
fi
if [ "$best" != 0 ] && fits 60 "whole prefill c0"; then
  QTUNE_NF4_GEMM=1 timed whole_c0 xtask 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8; pre whole_c0
fi
fits 60 "pieces 1024" && { timed pieces_1024 xtask 100 bench dequant --prefill --tokens 1024; show pieces_1024 | grep -E 'q_linear'; }
# Decoding and the Llama family with the fused GEMM on (batched rows take it where shapes fit).
if fits 100 "gpu-check decode"; then
  QTUNE_NF4_GEMM=1 timed check2 xtask 150 bench gpu-check --steps 10 --only decode,llama_family
  grep -E 'failed|beyond|unavailable' $OUT/check2.txt | cut -c1-300
  tail -2 $OUT/check2.txt | cut -c1-300
fi
# Triton's own compile of the same kernel beside cuBLAS (the image's Triton, not the shipped PTX).
if fits 200 "triton probe"; then
  s=$(date +%s)
  timeout 200 python3 crates/kernels/src/cuda/ptx/nf4_gemm.py --rows 512 > $OUT/triton_512.txt 2>&1
  echo "triton probe exit $? ($(( $(date +%s) - s )) s)"
  grep -E '"(best|cublas_ms|epilogues|triton|error)"|Error' $OUT/triton_512.txt | cut -c1-260
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
