#!/bin/bash
# For the next session's first call: does `sum_all` (5d02bf3: the loss and the gradient norms
# summed in a fixed order instead of through `Tensor::sum`'s float atomics) make the tiny
# model's GPU loss curve the same in every run? `bench gpu-check --only park,tiny_curve` RUNS
# times under the default pool, then once under `exclusive`; every run's kept and parked
# first/last losses and whether they are bit-identical. Then the full gpu-check, decode twice
# and bf16 / NF4 q,v once (the rows session 24 left).
#   carry [".device"] with bin/xtask_$NEW.xz (a build of main); source stash.sh first, then
#   NEW=main BUDGET=540 bash xtask/device/session25_a.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?}
X=/tmp/xtask_$NEW
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
park() { # label, env...
  local label=$1; shift
  fits 80 "park $label" || return
  env "$@" timeout 80 $X bench gpu-check --steps 30 --only park,tiny_curve > /tmp/park_$label.txt 2>&1
  echo "park $label exit $? $(grep -oE '"check":"(park_tiny_loss_curve|tiny_loss_curve)"[^}]*' /tmp/park_$label.txt | grep -oE 'bit_identical":[a-z]*|kept_first_last":\[[0-9.,]*|parked_first_last":\[[0-9.,]*|gpu_first_last":\[[0-9.,]*' | tr '\n' ' ')"
}
for i in $(seq 1 ${RUNS:-3}); do park default_$i CUBECL_CUDA_MEMORY=hybrid:1:128; done
park exclusive CUBECL_CUDA_MEMORY=exclusive
fits 170 "gpu-check" && bash xtask/device/gpu_check.sh $X $NEW 180
for r in 1 2; do
  fits 45 "decode $r" || continue
  timeout 75 $X bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 \
    > $OUT/decode_$r.txt 2>&1
  echo "decode r$r $(grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|rror.*|panicked.*' $OUT/decode_$r.txt | tr '\n' ' ')"
done
for c in bf16:qv nf4:qv; do
  fits 25 "ours $c" || continue
  f=$OUT/ours_${c//:/_}.txt
  timeout 60 $X bench train --model gptj-6b --quant ${c%:*} --targets ${c#*:} --warmup 3 --steps 8 \
    --decode 0 > $f 2>&1
  echo "ours $c $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' $f | tr '\n' ' ')"
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
