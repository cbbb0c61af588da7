#!/bin/bash
# Diagnostic (session 12): SmolLM2 real-data step time, padded vs packed vs fixed-shape bench, and
# the peer on the same padded batches, one call. After stash.sh (GGUF parts carried in 3 calls).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export QTUNE_KERNEL_CACHE=/tmp/kcache PYTHONPATH=$PWD/.device/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
G=/tmp/smollm2.gguf
if [ "${RUNS:-1}${PEER:-1}" != 00 ]; then
  [ -s $G ] || cat /tmp/stash/parts/p* > $G
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || { rm -f $G; exit 3; }
fi
export QTUNE_SMOLLM2_GGUF=$G QTUNE_DATA_DIR=/tmp/data
if [ ! -d /tmp/data/squad-v2 ]; then rm -rf /tmp/data; mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
X=/tmp/xtask
S=${STEPS:-100}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
which nsys ncu 2>&1 | head -2
mk() { # name packing multiple
  sed -e "s|^name_or_path.*|name_or_path = \"$G\"|" -e "s|^name = .*|name = \"$1\"|" \
      -e "s|^max_steps.*|max_steps = $S|" -e "s|^eval_steps.*|eval_steps = $S|" -e "s|^save_steps.*|save_steps = $S|" \
      -e "s|^generation_samples.*|generation_samples = 0|" -e "s|^max_length = 384|max_length = 384\npacking = $2|" \
      configs/smollm2-squad.toml > /tmp/$1.toml
  echo -e "\n" >> /tmp/$1.toml
}
win() { python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print([(r.get("step"), round(r["tokens_per_s"])) for r in rows if "tokens_per_s" in r][:20])
PY
}
[ "${RUNS:-1}" = 1 ] && for v in ${VARIANTS:-padded:false packed:true}; do
  n=diag-${v%%:*}; mk $n ${v##*:}
  echo "=== ours $n $(date -u +%T)"
  ( time timeout ${T_RUN:-150} $X train squad --config /tmp/$n.toml --overwrite ) > /tmp/$n.txt 2>&1
  tail -4 /tmp/$n.txt | cut -c1-400
  grep -o '"tokens_per_second": [0-9.]*' runs/$n/report.json; win runs/$n/metrics.jsonl
done
[ "${BENCH:-1}" = 1 ] && for sh in "8 384" "8 192"; do
  set -- $sh
  echo "=== bench smollm2 $1x$2 $(date -u +%T)"
  timeout 120 $X bench train --model smollm2-135m --quant nf4 --targets all --optim adamw --batch $1 --seq $2 --warmup 3 --steps 10 --decode 0 2>&1 | grep -E 'step_s_median|Error' | cut -c1-400
done
if [ "${PEER:-1}" = 1 ]; then
  D=/tmp/export-squad
  $X train squad --model smollm2-135m --export-data $D --seeds 0 --max-steps $S 2>/dev/null | tail -1
  echo "=== peer $(date -u +%T)"
  timeout ${T_PEER:-200} python3 xtask/device/peer_quality.py --data $D --gguf $G --out $OUT/peer.json --seeds 0 --steps $S --train-only > $OUT/peer.log 2>&1
  grep -E '"stage": "(trained|load)"' $OUT/peer.log | cut -c1-700
fi
echo "=== done $(date -u +%T)"
