#!/bin/bash
# Session 20, call 1 (never started: no machine): the pinned arena of parking on the GPU, and the
# q/k/v parts GEMV. NEW=dev7: a build of main with the revert of the parts GEMV reverted again
# (`git revert <the revert commit>`, or branch wip/gemv-parts); OLD=dev6: a build of main.
#  1. gpu-check of NEW (park_round_trip, park_tiny_loss_curve and every other line);
#  2. the path a user takes: `xtask train squad` on real SQuAD v2 (variable-length batches, so
#     the arena sees a new padded length most steps) with a 6-block bf16 tiny GPT-J, once with
#     gradient_checkpointing = true and once = "offload": the logged losses must agree bit for bit;
#  3. (after 4) the pool's size classes: the same run with CUBECL_CUDA_MEMORY=exclusive:24 (= the default),
#     exclusive:48 and exclusive:96, peak in use against reserved, kept and parked;
#  4. batch-1 decode in separate processes: 1-step graphs timed first in one and 4-step in the
#     other (`--graph-steps`), and NEW's q/k/v in one GEMV launch against OLD;
#  5. `ncu` on the quantized decode GEMV (NF4 + DQ 4096→4096, 4096→16384, 16384→4096): speed of
#     light, warp stall reasons, occupancy, memory workload (what limits it at ~1.1–1.5 TB/s).
#   carry [".device"] with bin/xtask_dev7.xz, bin/xtask_dev6.xz (stripped, `xz -6`) and data/; source
#   stash.sh first, then BUDGET=540 bash xtask/device/session20_a.sh (timeout 595). data/:
#     mkdir -p .device/data/squad-v2 .device/data/gpt2-tokenizer
#     gzip -c ../shared/datasets/squad-v2/dev-v2.0.json > .device/data/squad-v2/dev-v2.0.json.gz
#     for f in encoder.json vocab.bpe; do
#       gzip -c ../shared/datasets/gpt2-tokenizer/$f > .device/data/gpt2-tokenizer/$f.gz; done
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:-dev7}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-560} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 180
export QTUNE_DATA_DIR=/tmp/data
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
for gc in true offload; do
  fits 90 "user path $gc" || continue
  v=$gc; [ $gc = true ] || v='"offload"'
  sed -e "s/^name = .*/name = \"tiny6-$gc\"/" -e 's/^torch_dtype = .*/torch_dtype = "bfloat16"/' \
    -e 's/^n_layer = .*/n_layer = 6/' -e "s/^gradient_checkpointing = .*/gradient_checkpointing = $v/" \
    -e 's/^max_steps = .*/max_steps = 60/' -e 's/^logging_steps = .*/logging_steps = 1/' -e 's/^eval_steps = .*/eval_steps = 60/' \
    -e 's/^save_steps = .*/save_steps = 60/' -e 's/^generation_samples = .*/generation_samples = 8/' \
    configs/tiny.toml > /tmp/tiny6-$gc.toml
  echo "=== user path gradient_checkpointing = $v $(date -u +%T)"
  ( cd /tmp && timeout 90 /tmp/xtask_$NEW train squad --config /tmp/tiny6-$gc.toml --overwrite > $OUT/user_$gc.txt 2>&1
    echo "exit $?" ); tail -3 $OUT/user_$gc.txt | cut -c1-300
  cp /tmp/runs/tiny6-$gc/metrics.jsonl $OUT/metrics_$gc.jsonl 2>/dev/null
done
python3 - $OUT/metrics_true.jsonl $OUT/metrics_offload.jsonl <<'PY'
import json, sys
def losses(p):
    try: return [(r.get("step"), r["loss"], r.get("grad_norm")) for r in map(json.loads, open(p)) if "loss" in r]
    except OSError: return None
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print("user path losses: true", a and len(a), "offload", b and len(b),
      "bit-identical" if a and a == b else "DIFFER", (a or [])[:3], (b or [])[:3])
PY
# Decode: graph lengths without the order inside a process (1 step timed first, then 4 first),
# and the q/k/v parts GEMV (NEW) against OLD (the same tree without it) at 1 step first.
for run in $NEW:1 ${OLD:-dev6}:1 $NEW:4; do
  b=${run%:*} k=${run#*:}
  fits 45 "decode $b --graph-steps $k" || continue
  bash xtask/device/unpack.sh xtask_$b || continue
  echo "=== decode $b --graph-steps $k first $(date -u +%T)"
  timeout 80 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 --graph-steps $k > $OUT/decode_${b}_k$k.txt 2>&1
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_graph_steps)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $OUT/decode_${b}_k$k.txt | tr '\n' ' '; echo
done
for m in exclusive:24 exclusive:48 exclusive:96; do
  for o in "" --offload; do
    fits 20 "pool $m $o" || continue
    f=$OUT/pool_${m/:/_}${o}.txt
    CUBECL_CUDA_MEMORY=$m timeout 60 /tmp/xtask_$NEW bench train --model gptj-6b --quant nf4 --targets qv \
      --warmup 3 --steps 8 --decode 0 $o > $f 2>&1
    echo "pool $m $o $(grep -oE '"(step_s_median|tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
  done
done
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
if [ -n "$NCU" ] && fits 60 "ncu"; then
  echo "=== ncu gemv $(date -u +%T)"
  timeout 100 $NCU --kernel-name regex:gemv_kernel --launch-count 16 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    /tmp/xtask_$NEW bench dequant --decode --iters 2 > $OUT/ncu_gemv.txt 2>&1
  echo "ncu exit $?"
  grep -E "gemv_kernel|stalled_.*[1-9]|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Issued Ipc|Block Limit|No Eligible|Executed Ipc|L1/TEX Hit|Mem Busy|Max Bandwidth" \
    $OUT/ncu_gemv.txt | head -50
else
  echo "no ncu on this machine"
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
