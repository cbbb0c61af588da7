#!/bin/bash
# Session 14: batched generation (issue 19): the SQuAD v2 metric over 500 held-back prompts,
# 32 new tokens, batches of 32 longest first, GPT-J-6B NF4, ours then the peer on the same
# batches. carry [".device"] (bin/xtask.gz, data/, site/, peer_hf.py); source stash.sh first.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site QTUNE_DATA_DIR=/tmp/data HF_HUB_OFFLINE=1
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
X=/tmp/xtask
for b in ${BATCHES:-32}; do
  echo "=== ours batch $b $(date -u +%T)"
  timeout ${T_OURS:-150} $X bench generate --prompts ${PROMPTS:-500} --batch $b --new-tokens 32 \
    --export /tmp/gen_b$b.json 2>&1 | grep -E '^\{|rror' | tee -a $OUT/generate.txt
done
if [ "${PEER:-1}" = 1 ]; then
  echo "=== peer prepare $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 200 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  for b in ${BATCHES:-32}; do
    echo "=== peer batch $b $(date -u +%T)"
    timeout ${T_PEER:-240} python3 xtask/device/peer_generate.py /tmp/gen_b$b.json 2>&1 \
      | grep -E '^\{|Error' | tee -a $OUT/generate.txt
  done
fi
echo "=== end $(date -u +%T)"
