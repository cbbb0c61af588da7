#!/bin/bash
# Session 14, call 4: where a batched decode step goes. 128 of the 500 SQuAD prompts in batches
# of 32: prefill + 1 token, then 32 tokens (host profile), then the same batches by each path
# (`--fixed-paths`: since 3f2e17d, the call's binary, it times the stepwise loop too, and the
# graph path last). carry [".device"]; source stash.sh first.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export QTUNE_DATA_DIR=/tmp/data HF_HUB_OFFLINE=1
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
nvidia-smi --query-gpu=name --format=csv,noheader
for n in 1 32; do
  echo "=== new tokens $n $(date -u +%T)"
  extra=""; [ $n = 32 ] && extra="--fixed-paths --host-profile"
  timeout ${T_RUN:-110} /tmp/xtask bench generate --prompts ${PROMPTS:-128} --batch 32 --new-tokens $n $extra \
    > $OUT/gen_$n.txt 2>&1
  grep -E '"bench"|rror|panicked' $OUT/gen_$n.txt | cut -c1-400
  grep '"host_profile"' $OUT/gen_$n.txt | head -30 | cut -c1-170
done
echo "=== end $(date -u +%T)"
