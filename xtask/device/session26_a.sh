#!/bin/bash
# Session 26, call 1 (ran on an H100; BENCHMARKS.md, session 26). In order of need:
#  1. gpu-check `fused,gemv,llama,decode,llama_family` of dec2 = main a7abeb9 + session 25's
#     decode stack (its patch, since landed as 2542ec5, tidied in 106a09b; build at 5cdd3d7)
#     (the GEMV's first loads hoisted and x staged in shared memory, the decode graph recorded
#     without an eager step, the batched argmax loads, rope_write_kv, the few-row norms): every
#     GEMV setting bit-identical to r1, rope_write_kv bit-identical to its composition, the norms
#     against the CPU, the greedy fixtures;
#  2. decode alternating main / dec twice (session 25: 286.4 → 293.2 tok/s without the x staging);
#  3. `bench gpu-check --steps 30 --only park` twice on main: are the kept and parked tiny-model
#     loss curves bit-identical now that sum_all replaced Tensor::sum (5d02bf3)? (Session 25's
#     `park,tiny_curve` runs took more than 80 s each and timed out.)
#  4. `bench dequant --decode` of dec2 (the GEMV's µs at each rows-per-plane setting, x staged
#     and not).
# Builds: `CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p xtask --features
# cuda,xtask/host-profile` of main (cd032c2, session 25's; its kernels are a7abeb9's) and of
# dec2, stripped, `xz -6` into .device/bin/xtask_main.xz and xtask_dec2.xz.
#   carry [".device"]; source stash.sh first, then BUDGET=540 bash xtask/device/session26_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
for b in main dec2; do bash xtask/device/unpack.sh xtask_$b || exit 1; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if fits 150 "gpu-check dec"; then
  s=$(date +%s)
  timeout 170 /tmp/xtask_dec2 bench gpu-check --steps 30 --only fused,gemv,llama,decode,llama_family > $OUT/gpucheck_dec.txt 2>&1
  echo "gpu-check dec exit $? ($(( $(date +%s) - s )) s)"
  grep -E 'panicked|rror|is false|tolerance' $OUT/gpucheck_dec.txt | cut -c1-300 | head -12
  grep -oE '"(layer_norm_[0-9]_rows_(fwd|grad)_rel_err|q_bit_identical|caches_bit_identical|shared_cache_ok)":[a-z0-9.e-]*' $OUT/gpucheck_dec.txt | sort | uniq -c | tr '\n' ' '; echo
  grep -oE '"gemv_[a-z0-9_]*_bit_identical_to_r1":[a-z]*' $OUT/gpucheck_dec.txt | grep -oE '(true|false)$' | sort | uniq -c | tr '\n' ' '; echo
fi
decode() { # label, build
  fits 45 "decode $1" || return
  timeout 75 /tmp/xtask_$2 bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 > /tmp/decode_$1.txt 2>&1
  echo "decode $1 $(grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_ms_per_token_steady|decode_prefix_agreeing_no_graph_stepwise)":(\[[0-9.,]*|[0-9.]*)|rror.*|panicked.*' /tmp/decode_$1.txt | tr '\n' ' ')"
}
decode dec1 dec2; decode main1 main; decode dec2 dec2; decode main2 main
for i in $(seq 1 ${PARKS:-2}); do
  fits 130 "park $i" || continue
  s=$(date +%s)
  timeout 150 /tmp/xtask_main bench gpu-check --steps 30 --only park > /tmp/park_$i.txt 2>&1
  echo "park $i exit $? ($(( $(date +%s) - s )) s) $(grep -oE '"check":"park_tiny_loss_curve"[^}]*' /tmp/park_$i.txt | grep -oE 'bit_identical":[a-z]*|kept_first_last":\[[0-9.,]*|parked_first_last":\[[0-9.,]*' | tr '\n' ' ')"
  grep -E 'panicked|rror|is false' /tmp/park_$i.txt | head -3
done
if fits 70 "gemv bench dec"; then
  timeout 90 /tmp/xtask_dec2 bench dequant --decode --iters 20 > $OUT/gemv_dec.txt 2>&1
  echo "gemv dec exit $?"; grep -oE '"name":"[^"]*","ms":[0-9.]*,"[A-Za-z/]*":[0-9.]*' $OUT/gemv_dec.txt | head -40
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
