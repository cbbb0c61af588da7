#!/bin/bash
# The call that decides both Triton kernels (neither has run on a GPU; both off by default):
# the fused NF4 GEMM (`crates/kernels/src/cuda/nf4_gemm.rs`, session 28) and the fused attention
# forward (`flash_attn.rs`, session 29). In order: their GPU checks against the unfused paths;
# the prefill block's pieces at 512 rows with every config of each (the fastest that ran within
# 1e-2 picked); the whole GPT-J-6B NF4 prefill off, with the GEMM, with both; then the pieces at
# 1024 rows, decoding and the Llama family with both on, and Triton's own compiles (probes).
# Supersedes session28_a.sh (same first half).
# Build: .device/bin/xtask.xz (`CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p xtask
# --features cuda,xtask/host-profile`, stripped, `xz -6`) of this tree.
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=560 bash xtask/device/session29_a.sh
set -uo pipefail
source xtask/device/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
show() { grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/$1.txt; }
pre() { grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[a-z0-9.]*' $OUT/$1.txt | tr '\n' ' '; echo; }
whole() { timed $1 xtask 100 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8; pre $1; }
if fits 150 "gpu-check"; then
  timed check xtask 220 bench gpu-check --steps 10 --only nf4_gemm,flash_attn,mlp
  grep -E 'nf4_gemm|flash_attn|unavailable|failed|beyond' $OUT/check.txt | cut -c1-400
  tail -2 $OUT/check.txt | cut -c1-300
fi
fits 70 "pieces 512" && { timed pieces_512 xtask 110 bench dequant --prefill --tokens 512; show pieces_512 | grep -E 'q_linear|gemm [0-9]|dequant|attention'; }
# The NF4 GEMM config whose three linears (4 × 4096², fc_in, fc_out per block) sum fastest, and
# the fastest attention config, among those that ran and stayed within 1e-2 of the unfused path.
read -r best fbest < <(python3 - $OUT/pieces_512.txt <<'PY'
import json, re, sys
t, fa = {}, {}
for ln in open(sys.argv[1]):
    m = re.search(r'"name":"q_linear fused c(\d+) (\S+) \(err ([^,]+), fused\)', ln)
    if m and float(m.group(3)) <= 1e-2:  # ran, and within the check's tolerance
        c, shape = int(m.group(1)), m.group(2)
        t.setdefault(c, {})[shape] = json.loads(ln)["ms"]
    m = re.search(r'"name":"attention flash c(\d+) \(err ([^,]+), fused\)', ln)
    if m and float(m.group(2)) <= 1e-2:
        fa[int(m.group(1))] = json.loads(ln)["ms"]
w = {"4096->4096": 4, "4096->16384": 1, "16384->4096": 1}
tot = {c: sum(w[s] * v for s, v in d.items()) for c, d in t.items() if len(d) == 3}
for c in sorted(tot):
    print(f"gemm config {c}: {tot[c]:.4f} ms per block", file=sys.stderr)
for c in sorted(fa):
    print(f"attention config {c}: {fa[c]:.4f} ms per block", file=sys.stderr)
print(min(tot, key=tot.get) if tot else "none", min(fa, key=fa.get) if fa else "none")
PY
)
echo "best gemm config: $best; best attention config: $fbest"
fits 60 "whole prefill off" && QTUNE_NF4_GEMM=0 QTUNE_FLASH_ATTN=0 whole whole_off
if [ "$best" != none ] && fits 60 "whole prefill gemm"; then
  QTUNE_NF4_GEMM=1 QTUNE_NF4_GEMM_CFG=$best whole whole_gemm
fi
if [ "$fbest" != none ] && fits 60 "whole prefill attention"; then
  QTUNE_FLASH_ATTN=1 QTUNE_FLASH_ATTN_CFG=$fbest whole whole_flash
fi
if [ "$best" != none ] && [ "$fbest" != none ] && fits 60 "whole prefill both"; then
  QTUNE_NF4_GEMM=1 QTUNE_NF4_GEMM_CFG=$best QTUNE_FLASH_ATTN=1 QTUNE_FLASH_ATTN_CFG=$fbest whole whole_both
fi
fits 60 "pieces 1024" && { timed pieces_1024 xtask 100 bench dequant --prefill --tokens 1024; show pieces_1024 | grep -E 'q_linear|attention'; }
# Decoding, the fixtures' logits and the Llama family with both on (batched rows take them where
# shapes fit).
if fits 100 "gpu-check decode"; then
  b=${best/none/0}; f=${fbest/none/0}
  QTUNE_NF4_GEMM=1 QTUNE_NF4_GEMM_CFG=$b QTUNE_FLASH_ATTN=1 QTUNE_FLASH_ATTN_CFG=$f \
    timed check2 xtask 150 bench gpu-check --steps 10 --only fixtures,decode,llama_family
  grep -E 'failed|beyond|unavailable' $OUT/check2.txt | cut -c1-300
  tail -2 $OUT/check2.txt | cut -c1-300
fi
# Triton's own compiles of the same kernels (the image's Triton, not the shipped PTX).
for probe in flash_attn nf4_gemm; do
  if fits 120 "triton probe $probe"; then
    s=$(date +%s)
    timeout 120 python3 crates/kernels/src/cuda/ptx/$probe.py --rows 512 > $OUT/probe_$probe.txt 2>&1
    echo "probe $probe exit $? ($(( $(date +%s) - s )) s)"
    grep -E '"(best|cublas_ms|sdpa_causal_ms|epilogues|triton|error|ms)"|Error' $OUT/probe_$probe.txt | cut -c1-220 | head -30
  fi
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
