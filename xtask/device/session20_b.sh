#!/bin/bash
# Session 20, call 2: issue 19's other rows on main (NEW=dev6), the peer's in the same call, and
# where the decode GEMV stalls:
#  1. session19_b.sh's rows (bf16 q,v, blockwise 8-bit q,v, NF4 all-linear; kept and parked) and
#     the peer's bf16, LLM.int8 and NF4 all-linear;
#  2. batch-1 decode in two processes, 1-step graphs timed first in one and 4-step in the
#     other (`--graph-steps`): which length is faster without the order inside a process;
#  3. `ncu` on the quantized decode GEMV (NF4 + DQ 4096→4096, 4096→16384, 16384→4096): speed of
#     light, warp stall reasons, occupancy, memory workload (what limits it at ~1.1–1.5 TB/s).
#   carry [".device"] with bin/xtask_dev6.xz, site/ (bitsandbytes) and peer_hf.py; source
#   stash.sh first.   BUDGET=540 bash xtask/device/session20_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NCU_T=${NCU_T:-120}
NEW=${NEW:-dev6} BUDGET=$(( ${BUDGET:-540} - NCU_T - 90 )) bash xtask/device/session19_b.sh
bash xtask/device/unpack.sh xtask_${NEW:-dev6} || exit 1
# Decode graph lengths without the order inside a process: 1 step timed first, then 4 first.
for k in 1 4; do
  fits_d() { [ $(( $(date +%s) - START + $1 + NCU_T )) -le ${BUDGET:-540} ]; }
  fits_d 45 || { echo "--- skipped: decode --graph-steps $k"; continue; }
  echo "=== decode --graph-steps $k first $(date -u +%T)"
  timeout 80 /tmp/xtask_${NEW:-dev6} bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 --graph-steps $k > $OUT/decode_k$k.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_graph_steps)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $OUT/decode_k$k.txt | tr '\n' ' '; echo
done
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
if [ -n "$NCU" ]; then
  echo "=== ncu gemv $(date -u +%T)"
  timeout $NCU_T $NCU --kernel-name regex:gemv_kernel --launch-count 16 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    /tmp/xtask_${NEW:-dev6} bench dequant --decode --iters 2 > $OUT/ncu_gemv.txt 2>&1
  echo "ncu exit $?"
  grep -E "gemv_kernel|stalled_.*[1-9]|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Issued Ipc|Block Limit|No Eligible|Executed Ipc|L1/TEX Hit|Mem Busy|Max Bandwidth" \
    $OUT/ncu_gemv.txt | head -120
else
  echo "no ncu on this machine"
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
