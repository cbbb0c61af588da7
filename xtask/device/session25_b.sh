#!/bin/bash
# Session 25, call 1. In order of need:
#  1. does `sum_all` (5d02bf3) make the tiny model's GPU loss curve the same in every run?
#     `bench gpu-check --only park,tiny_curve` RUNS times under the default pool, once under
#     `exclusive` (build main);
#  2. the GEMV with its first loads ahead of the code map's staging (build hoist, branch
#     wip/gemv-hoist); the decode graph recorded right after the prefill, no eager step first
#     (build cf, branch wip/capture-first at 90e9033); both and the batched argmax loads (build
#     all = wip/capture-first c4257be + wip/gemv-hoist); all2 = all + one launch for a decode
#     step's rotary and cache writes (wip/rope-write, dcaded0; merge a2a6696): gpu-check's `gemv`
#     group (hoist) and `gemv,decode,llama_family` groups (all2), `bench dequant --decode` of
#     main and hoist, decode alternating; all3 = all2 + the forward norms a cube per row at
#     most 64 rows (wip/norm-rows 9764794 merged: wip/all 55965d5 + the source-count fix);
#  3. ncu over the first decode step's GEMV launches (main): registers, occupancy, issue and
#     pipe use, stall reasons, instructions, one file back ($OUT/ncu_decode.txt);
#  4. the SASS of the GEMV kernels where the image has ptxas and cuobjdump ($OUT/sass_gemv.txt).
#   carry [".device"] with bin/xtask_{main,all,all2,all3}.xz; source stash.sh first, then
#   BUDGET=540 bash xtask/device/session25_b.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
for b in main all all2 all3; do bash xtask/device/unpack.sh xtask_$b || exit 1; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
park() { # label, env...
  local label=$1; shift
  fits 70 "park $label" || return
  local s=$(date +%s)
  env "$@" timeout 80 /tmp/xtask_main bench gpu-check --steps 30 --only park,tiny_curve > /tmp/park_$label.txt 2>&1
  echo "park $label exit $? ($(( $(date +%s) - s )) s) $(grep -oE '"check":"(park_tiny_loss_curve|tiny_loss_curve)"[^}]*' /tmp/park_$label.txt | grep -oE 'bit_identical":[a-z]*|kept_first_last":\[[0-9.,]*|parked_first_last":\[[0-9.,]*|gpu_first_last":\[[0-9.,]*' | tr '\n' ' ')"
  grep -E 'panicked|rror' /tmp/park_$label.txt | head -3
}
for i in $(seq 1 ${RUNS:-3}); do park default_$i; done
park exclusive CUBECL_CUDA_MEMORY=exclusive
check() { # build, groups
  fits 60 "gpu-check $2 ($1)" || return
  timeout 100 /tmp/xtask_$1 bench gpu-check --steps 30 --only $2 > /tmp/gpucheck_$1.txt 2>&1
  echo "gpu-check $2 $1 exit $? $(grep -c '"ok":true' /tmp/gpucheck_$1.txt) ok, $(grep -c '"ok":false' /tmp/gpucheck_$1.txt) failed"
  grep -E 'panicked|rror|"ok":false|agree|tokens_equal|rope_write_kv|is false' /tmp/gpucheck_$1.txt | cut -c1-300 | head -14
}

check all3 fused,gemv,llama,decode,llama_family
decode() { # label, build
  fits 45 "decode $1" || return
  timeout 75 /tmp/xtask_$2 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 > /tmp/decode_$1.txt 2>&1
  echo "decode $1 $(grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_ms_per_token_steady|decode_prefix_agreeing_no_graph_stepwise)":(\[[0-9.,]*|[0-9.]*)|rror.*|panicked.*' /tmp/decode_$1.txt | tr '\n' ' ')"
}
decode main1 main; decode all3_1 all3; decode all2_1 all2; decode all1 all
decode main2 main; decode all3_2 all3; decode all2_2 all2
for b in main all; do
  fits 40 "gemv bench $b" || continue
  timeout 60 /tmp/xtask_$b bench dequant --decode --iters 20 > /tmp/gemv_$b.txt 2>&1
  echo "gemv $b exit $? $(grep -E '"kind":"gemv"' /tmp/gemv_$b.txt | grep -oE '"name":"[^"]*"|"us":[0-9.]*' | paste -d' ' - - | sed 's/"name"://; s/"us"://' | tr '\n' ';')"
done
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && fits 90 "ncu"; then
  echo "=== ncu decode gemv $(date -u +%T)"
  timeout 120 $NCU --kernel-name regex:gemv --launch-count 8 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
    --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
    --metrics smsp__inst_executed.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum \
    /tmp/xtask_main bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 4 \
    > $OUT/ncu_decode.txt 2>&1
  echo "ncu exit $?"
  grep -E '^  [a-z_]*gemv|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|Executed Ipc A|smsp__inst_executed.sum|wavefronts_mem_shared|pipe_(fma|alu|lsu)' \
    $OUT/ncu_decode.txt | head -80
fi
PTXAS=$(command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null | head -1)
CUOBJ=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null | head -1)
echo "ptxas: ${PTXAS:-none} cuobjdump: ${CUOBJ:-none}; cuda bin: $(ls /usr/local/cuda/bin 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
if [ -n "$PTXAS" ] && [ -n "$CUOBJ" ]; then
  : > $OUT/sass_gemv.txt
  for f in $(grep -l 'gemv' $(find /tmp/kcache -type f 2>/dev/null) 2>/dev/null | head -40); do
    # PTX entries may be stored inside JSON; extract text between .version and the end.
    python3 - "$f" > /tmp/k.ptx <<'PY'
import sys, json, re
t = open(sys.argv[1], errors="replace").read()
i = t.find(".version")
if i < 0: sys.exit(0)
s = t[i:]
# unescape JSON string escapes if the PTX is embedded in a JSON string
if '\\n' in s[:200]:
    s = s.split('"')[0].encode().decode('unicode_escape')
print(s)
PY
    [ -s /tmp/k.ptx ] || continue
    grep -q 'gemv' /tmp/k.ptx || continue
    $PTXAS -arch=sm_90 -v /tmp/k.ptx -o /tmp/k.cubin >> $OUT/sass_gemv.txt 2>&1 && \
      $CUOBJ -sass /tmp/k.cubin | grep -vE '^\s*$|/\*[0-9a-f]{4}\*/\s+\{|^\s+\}' >> $OUT/sass_gemv.txt
  done
  echo "sass: $(wc -l < $OUT/sass_gemv.txt) lines"
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
