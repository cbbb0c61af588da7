#!/bin/bash
# One device call of the Llama-shape training benchmark: ours (`xtask bench train --model M`) in
# $MODES, then HF transformers + PEFT + bitsandbytes (xtask/device/peer_bench.py) in $PEERS on the
# same shapes, so every ratio comes from one call on one GPU. Full logs go to $OUT.
#   source xtask/device/stash.sh   # carry [".device"] with bin/xtask.gz and site/ (bnb wheel)
#   MODELS='llama-7b' MODES='nf4:qv nf4:all' PEERS='nf4 nf4-all' bash xtask/device/llama_bench.sh
# Options: CHECK=1 runs `bench gpu-check` first; DECODE=N new tokens (0: training only, and the
# peer skips inference too); SHAPE_ARGS='--batch 8 --seq 128 --optim adamw' go to both sides
# (same spelling in bench train and peer_bench.py).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export QTUNE_KERNEL_CACHE=/tmp/kcache PYTHONPATH=$PWD/.device/site PYTHONUNBUFFERED=1
X=/tmp/xtask
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ -n "${CHECK:-}" ]; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 300 $X bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error|llama|rms|swiglu|rope' $OUT/gpucheck.txt | cut -c1-400 | tail -20
fi
for model in ${MODELS:-llama-7b}; do
  for m in ${MODES:-nf4:qv}; do
    set -- ${m%%:*} ${m##*:}
    echo "=== ours $model $1 $2 $(date -u +%T)"
    timeout ${T_OURS:-200} $X bench train --model $model --quant $1 --targets $2 --warmup 3 --steps 8 \
      --decode ${DECODE:-128} ${SHAPE_ARGS:-} > /tmp/ours_${model}_$1_$2.txt 2>&1
    echo "exit $?"
    cat /tmp/ours_${model}_$1_$2.txt >> $OUT/ours.txt
    grep -E 'tokens_per_s|decode_tok|Error|panicked|"bench"' /tmp/ours_${model}_$1_$2.txt | cut -c1-900
  done
  if [ -n "${PEERS:-}" ]; then
    if [ ! -d /tmp/$model-random ]; then
      echo "=== peer prepare $model $(date -u +%T)"
      timeout 240 python3 xtask/device/peer_bench.py prepare $model 2>&1 | grep '^{' | tee -a $OUT/peers.txt
    fi
    for p in $PEERS; do
      echo "=== peer $model $p $(date -u +%T)"
      timeout ${T_PEER:-180} python3 xtask/device/peer_bench.py train $model $p ${SHAPE_ARGS:-} \
        $([ "${DECODE:-128}" = 0 ] && echo --no-infer) > /tmp/peer_${model}_$p.txt 2>&1
      echo "exit $?"
      grep "^{" /tmp/peer_${model}_$p.txt | tee -a $OUT/peers.txt | cut -c1-600
      grep -E "Error|error" /tmp/peer_${model}_$p.txt | tail -3 | cut -c1-400
    done
  fi
done
echo "=== end $(date -u +%T)"
