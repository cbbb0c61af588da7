#!/bin/bash
# Session 22, call 8: issue 19's table on main with the hybrid pool as the default (NEW = fin),
# the peer in the same call (session21_b.sh: ours, decode, dequant, the peer, the full
# gpu-check), then whether the in-place cross-entropy backward took effect: the head's
# 1,331-row chunks reserve [1331, 50400] bf16 buffers (134.16 MB) this many times in a
# 2-step run under cubecl's memory logger, OLD (before it) against NEW.
#   carry [".device"] with bin/xtask_$NEW.xz, bin/xtask_$OLD.xz, site/, peer_hf.py; source
#   stash.sh first, then NEW=fin OLD=main bash xtask/device/session22_g.sh (timeout 595)
set -uo pipefail
START=$(date +%s)
NEW=${NEW:?} OLD=${OLD:?}
NEW=$NEW BUDGET=${BUDGET:-530} bash xtask/device/session21_b.sh
bash xtask/device/unpack.sh xtask_$OLD || exit 1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
mkdir -p /tmp/memlog2 && cd /tmp/memlog2
printf '[memory.logger]\nlevel = "full"\nfile = "/tmp/memlog2/mem.log"\nappend = false\n' > cubecl.toml
for b in $OLD $NEW; do
  [ $(( $(date +%s) - START )) -le 570 ] || { echo "--- skipped: log $b"; continue; }
  rm -f mem.log
  timeout 20 /tmp/xtask_$b bench train --model gptj-6b --quant nf4 --targets qv --warmup 1 --steps 1 \
    --decode 0 > run_$b.txt 2>&1
  echo "log $b exit $? reserves of 134.16 MB: $(grep -c 'Reserved memory 134.16 MB' mem.log)"
done
echo "=== end all $(date -u +%T) ($(( $(date +%s) - START )) s)"
