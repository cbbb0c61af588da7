#!/bin/bash
# Session 25, call 2. In order of need:
#  1. `bench gpu-check --steps 30 --only park` twice (build main): are the kept and parked
#     tiny-model loss curves bit-identical now that sum_all replaced Tensor::sum (5d02bf3)?
#     (Call 1 gave `park,tiny_curve` 80 s: every run timed out.)
#  2. gpu-check `fused,gemv,llama,decode,llama_family` of all4 = all3 + the GEMV's x staged in
#     shared memory (wip/gemv-xshared 1ada847) + the fixed few-row LayerNorm check (merge
#     wip/all 95f6d39);
#  3. decode alternating all3 / all4 twice, then `bench dequant --decode` of all4.
#   carry [".device"] with bin/xtask_{main,all3,all4}.xz; source stash.sh first, then
#   BUDGET=520 bash xtask/device/session25_c.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-520} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
for b in main all3 all4; do bash xtask/device/unpack.sh xtask_$b || exit 1; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if fits 150 "gpu-check all4"; then
  s=$(date +%s)
  timeout 170 /tmp/xtask_all4 bench gpu-check --steps 30 --only fused,gemv,llama,decode,llama_family > $OUT/gpucheck_all4.txt 2>&1
  echo "gpu-check all4 exit $? ($(( $(date +%s) - s )) s)"
  grep -E 'panicked|rror|is false|tolerance' $OUT/gpucheck_all4.txt | cut -c1-300 | head -12
  grep -oE '"(layer_norm_[0-9]_rows_(fwd|grad)_rel_err|q_bit_identical|caches_bit_identical|shared_cache_ok)":[a-z0-9.e-]*' $OUT/gpucheck_all4.txt | sort | uniq -c | tr '\n' ' '; echo
  grep -oE '"gemv_[a-z0-9_]*_bit_identical_to_r1":[a-z]*' $OUT/gpucheck_all4.txt | grep -oE '(true|false)$' | sort | uniq -c | tr '\n' ' '; echo
fi
for i in $(seq 1 ${PARKS:-2}); do
  fits 130 "park $i" || continue
  s=$(date +%s)
  timeout 150 /tmp/xtask_main bench gpu-check --steps 30 --only park > /tmp/park_$i.txt 2>&1
  echo "park $i exit $? ($(( $(date +%s) - s )) s) $(grep -oE '"check":"park_tiny_loss_curve"[^}]*' /tmp/park_$i.txt | grep -oE 'bit_identical":[a-z]*|kept_first_last":\[[0-9.,]*|parked_first_last":\[[0-9.,]*' | tr '\n' ' ')"
  grep -E 'panicked|rror|is false' /tmp/park_$i.txt | head -3
done
decode() { # label, build
  fits 45 "decode $1" || return
  timeout 75 /tmp/xtask_$2 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 > /tmp/decode_$1.txt 2>&1
  echo "decode $1 $(grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_ms_per_token_steady|decode_prefix_agreeing_no_graph_stepwise)":(\[[0-9.,]*|[0-9.]*)|rror.*|panicked.*' /tmp/decode_$1.txt | tr '\n' ' ')"
}
decode all4_1 all4; decode all3_1 all3; decode all4_2 all4; decode all3_2 all3
if fits 40 "gemv bench all4"; then
  timeout 60 /tmp/xtask_all4 bench dequant --decode --iters 20 > $OUT/gemv_all4.txt 2>&1
  echo "gemv all4 exit $?"; grep -E 'gemv' $OUT/gemv_all4.txt | tail -14
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
