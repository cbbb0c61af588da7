#!/bin/bash
# Session 21, call 5: NEW (dev11 = dev10 + the one-launch attention of a decode step) against
# OLD (dev10).
#  1. gpu-check of NEW: every line; the GQA attention checks now include three T = 1 shapes
#     (forward and the three gradients from the kernel's p, against the CPU);
#  2. batch-1 decode in separate processes, NEW, OLD, NEW, OLD; then NEW's step pieces;
#  3. the path a user takes: `xtask train squad` (real SQuAD v2, 6-block bf16 tiny GPT-J, 30
#     steps, 16 generated answers: batched greedy decoding, T = 1 attention with B > 1) with NEW
#     and OLD; the predictions must agree.
#   carry [".device"] with bin/xtask_dev11.xz, bin/xtask_dev10.xz, data/ (see session20_a.sh);
#   source stash.sh first, then BUDGET=430 bash xtask/device/session21_c.sh (timeout 595)
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:-dev11} OLD=${OLD:-dev10}
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-430} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
bash xtask/device/unpack.sh xtask_$NEW || exit 1
bash xtask/device/unpack.sh xtask_$OLD || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for b in $NEW $OLD $NEW $OLD; do
  fits 40 "decode $b" || continue
  echo "=== decode $b $(date -u +%T)"
  timeout 80 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 \
    --steps 0 --decode 128 >> $OUT/decode_$b.txt 2>&1
  tail -1 $OUT/decode_$b.txt | grep -oE '"(prefill_tok_s|decode_tok_s_b1)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|"same_tokens":[a-z]*|"decode_prefix_agreeing_no_graph_stepwise":\[[0-9,]*\]|rror.*' \
    | tr '\n' ' '; echo
done
if fits 40 "decode pieces"; then
  timeout 80 /tmp/xtask_$NEW bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
    --decode 128 --decode-profile > $OUT/decode_profile.txt 2>&1
  grep decode_piece $OUT/decode_profile.txt | sed 's/"model":"gptj-6b",//' | cut -c1-130
fi
export QTUNE_DATA_DIR=/tmp/data
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
for b in $NEW $OLD; do
  fits 60 "user path $b" || continue
  sed -e "s/^name = .*/name = \"tiny6-$b\"/" -e 's/^torch_dtype = .*/torch_dtype = "bfloat16"/' \
    -e 's/^n_layer = .*/n_layer = 6/' -e 's/^max_steps = .*/max_steps = 30/' -e 's/^eval_steps = .*/eval_steps = 30/' \
    -e 's/^save_steps = .*/save_steps = 30/' -e 's/^generation_samples = .*/generation_samples = 16/' \
    configs/tiny.toml > /tmp/tiny6-$b.toml
  echo "=== user path $b $(date -u +%T)"
  ( cd /tmp && timeout 60 /tmp/xtask_$b train squad --config /tmp/tiny6-$b.toml --overwrite > $OUT/user_$b.txt 2>&1
    echo "exit $?" ); grep -E "final eval|rror" $OUT/user_$b.txt | cut -c1-300
  cp /tmp/runs/tiny6-$b/predictions.jsonl $OUT/pred_$b.jsonl 2>/dev/null
done
cmp -s $OUT/pred_$NEW.jsonl $OUT/pred_$OLD.jsonl && echo "predictions identical" || \
  { echo "predictions differ:"; diff <(cut -c1-200 $OUT/pred_$NEW.jsonl) <(cut -c1-200 $OUT/pred_$OLD.jsonl) | head -8; }
fits 160 "gpu-check" && bash xtask/device/gpu_check.sh /tmp/xtask_$NEW $NEW 170
grep -E 'attention GQA' $OUT/gpucheck_$NEW.txt | grep -E 'T 1,|"ok":false' | cut -c1-260
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
