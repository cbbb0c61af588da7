#!/bin/bash
# Session 27's second call, an experiment: the prefetch (3d08adf, the next block's weights
# dequantized on a second stream) with cuBLASLt's GEMM plans sized for fewer SMs
# (`CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET` from `QTUNE_GEMM_SMS`), so that the side stream's
# dequantization may run beside the GEMMs. Prefill 1 x 512 NF4 with and without the prefetch
# (alternated in one process) at each SM target.
# Build: a local branch (main at 4d32239 + 3d08adf + the SM target: `sm_target()` in
# gemm_lt.rs set CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET in `plan`), not kept: the experiment found
# nothing to land. As session27_a.sh's, into .device/bin/xtask_sm.xz. It ran as .device/s27b.sh:
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=300 bash xtask/device/session27_b.sh
set -uo pipefail
source xtask/device/common.sh
bash xtask/device/unpack.sh xtask_sm || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
pre() { grep -oE '"(prefill_tok_s|prefill_tok_s_no_prefetch|prefill_same_logits_no_prefetch)":[a-z0-9.]*' $OUT/$1.txt | tr '\n' ' '; echo; }
for sms in default 124 116 100 84; do
  fits 40 "SM target $sms" || break
  if [ $sms = default ]; then unset QTUNE_GEMM_SMS; else export QTUNE_GEMM_SMS=$sms; fi
  timed sms_$sms sm 60 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 8
  echo -n "SMs $sms: "; pre sms_$sms
done
unset QTUNE_GEMM_SMS
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
