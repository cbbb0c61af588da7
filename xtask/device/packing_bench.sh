#!/bin/bash
# Issue 16's packing throughput, one device call: `qtune train` (xtask train) on real SQuAD v2
# prompts, GPT-J-6B of the real shape with random weights, NF4 + double quant, LoRA r16 on q,v,
# batch 8 × max_length 512, per-block checkpointing, 8-bit AdamW:
#   1. packing = true (real tokens/s: padding-free rows);
#   2. packing = false (rows padded to the batch's longest, as before issue 16);
#   3. `bench train` at the fixed 8 × 512 shape (every token real): the reference of the ≥ 90 % target;
#   4. the peer: HF transformers + PEFT + bitsandbytes on the same examples in the same batches of 8,
#      its padding collator (pad to the longest), from the same random GPT-J-6B saved by HF
#      (xtask/device/peer_load.py prepare; reused when load_bench.sh made it earlier on this machine).
# Steady-state tokens/s: train windows after the first (which holds the kernel JIT), real tokens only.
# Prepare here: .device/bin/xtask.gz (cuda build); .device/data with squad-v2 and gpt2-tokenizer (gzipped).
#   source xtask/device/stash.sh; bash xtask/device/packing_bench.sh     # carry [".device"]
# Options: STEPS (default 40), MODES (default "packed:true padded:false"), PEER=0 skips the
# peer, BENCH=0 skips `bench train`, DTYPES (default "bfloat16"; "bfloat16 float16" runs each
# mode in both and compares their loss curves: issue 19's float16 check on the 6B shape; an entry
# "bfloat16@43" runs with [training] seed 43, same data order, and is compared with the first
# bfloat16 run too: the seed-to-seed spread the float16 difference is read against),
# T_* time limits.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export QTUNE_KERNEL_CACHE=/tmp/kcache PYTHONPATH=$PWD/.device/site PYTHONUNBUFFERED=1
export QTUNE_DATA_DIR=/tmp/data HF_HUB_OFFLINE=1
X=/tmp/xtask
DIR=${DIR:-/tmp/gptj-6b-load}
STEPS=${STEPS:-40}
if [ ! -f /tmp/data/gpt2-tokenizer/encoder.json ]; then
  rm -rf /tmp/data && mkdir -p /tmp/data && cp -r .device/data/* /tmp/data/ && gunzip -r /tmp/data
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

config() { # name packing dtype [training seed]
  cat > /tmp/$1.toml <<TOML
name = "$1"
[model]
torch_dtype = "$3"
[model.random]
seed = 0
vocab_size = 50400
n_positions = 2048
n_embd = 4096
n_layer = 28
n_head = 16
rotary_dim = 64
[model.quantization]
load_in_4bit = true
bnb_4bit_quant_type = "nf4"
bnb_4bit_use_double_quant = true
[lora]
r = 16
lora_alpha = 32
lora_dropout = 0.05
target_modules = ["q_proj", "v_proj"]
[data]
dataset = "squad_v2"
max_length = 512
max_eval_samples = 8
packing = $2
seed = 42
[training]
output_dir = "/tmp/runs/$1"
learning_rate = 2e-4
per_device_train_batch_size = 8
per_device_eval_batch_size = 8
max_steps = $STEPS
warmup_steps = 5
logging_steps = 5
eval_steps = $STEPS
save_steps = $STEPS
optim = "adamw_bnb_8bit"
gradient_checkpointing = true
seed = ${4:-42}
[eval]
generation_samples = 0
TOML
}
# Mean real tokens/s of the train windows after the first, from metrics.jsonl.
steady() {
  python3 - "$1" <<'PY'
import json, sys
w = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
w = [e for e in w if e.get("event") == "train"]
later = [e["tokens_per_s"] for e in w[1:]]
print(json.dumps({"windows": len(w), "first_window_tok_s": round(w[0]["tokens_per_s"]) if w else None,
                  "steady_tok_s": round(sum(later) / len(later)) if later else None}))
PY
}
# Two runs' train-window losses side by side: the largest difference, and the skipped steps.
compare() {
  python3 - "$1" "$2" <<'PY'
import json, sys
def windows(p):
    return [json.loads(l) for l in open(p) if '"event": "train"' in l or '"event":"train"' in l]
a, b = windows(sys.argv[1]), windows(sys.argv[2])
la, lb = [e["loss"] for e in a], [e["loss"] for e in b]
n = min(len(la), len(lb))
diff = [abs(x - y) for x, y in zip(la[:n], lb[:n])]
print(json.dumps({"compare": [sys.argv[1], sys.argv[2]], "windows": n,
                  "first": [la[0], lb[0]] if n else None, "last": [la[n-1], lb[n-1]] if n else None,
                  "max_abs_diff": max(diff) if diff else None,
                  "skipped_steps": [a[-1].get("skipped_steps"), b[-1].get("skipped_steps")] if n else None,
                  "loss_scale_last": b[-1].get("loss_scale") if n else None}))
PY
}
for mode in ${MODES:-packed:true padded:false}; do
  for spec in ${DTYPES:-bfloat16}; do
    dtype=${spec%@*}; seed=$([ $spec = $dtype ] || echo ${spec#*@})
    name=gptj6b-${mode%%:*}$([ $dtype = bfloat16 ] || echo -$dtype)${seed:+-s$seed}
    config $name ${mode##*:} $dtype $seed
    echo "=== ours qtune train, $name $(date -u +%T)"
    rm -rf /tmp/runs/$name
    timeout ${T_OURS:-200} $X train squad --config /tmp/$name.toml --overwrite > $OUT/$name.txt 2>&1
    echo "exit $?"; grep -m1 "packed training examples" $OUT/$name.txt | cut -c1-300; tail -3 $OUT/$name.txt | cut -c1-300
    cp /tmp/runs/$name/metrics.jsonl $OUT/$name.metrics.jsonl 2>/dev/null && steady /tmp/runs/$name/metrics.jsonl
  done
  base=/tmp/runs/gptj6b-${mode%%:*}/metrics.jsonl
  for other in /tmp/runs/gptj6b-${mode%%:*}-*/metrics.jsonl; do
    [ -f $base ] && [ -f $other ] && compare $base $other
  done
done
[ "${BENCH:-1}" = 0 ] && { echo "=== bench skipped (BENCH=0)"; exit 0; }

echo "=== ours bench train, fixed 8 x 512 $(date -u +%T)"
timeout ${T_BENCH:-150} $X bench train --model gptj-6b --quant nf4 --targets qv --batch 8 --seq 512 --decode 0 \
  > $OUT/bench.txt 2>&1
echo "exit $?"; grep -E '"phase": ?"(train_summary|summary)"|tokens_per_s|Error|error' $OUT/bench.txt | tail -3 | cut -c1-400

if [ "${PEER:-1}" = 0 ]; then echo "=== peer skipped (PEER=0)"; exit 0; fi
echo "=== peer: same examples, batches of 8 padded to the longest $(date -u +%T)"
if [ ! -f $DIR/model.safetensors.index.json ]; then
  timeout ${T_PREPARE:-180} python3 xtask/device/peer_load.py prepare gptj-6b $DIR > $OUT/prepare.txt 2>&1
  echo "prepare exit $?"
fi
$X train squad --config /tmp/gptj6b-padded.toml --export-data /tmp/export-gptj6b --seeds 42 2>/dev/null | tail -1
timeout ${T_PEER:-240} python3 xtask/device/peer_quality.py --data /tmp/export-gptj6b --hf-model $DIR \
  --out $OUT/peer.json --train-only --steps $STEPS --seeds 42 > $OUT/peer.txt 2>&1
echo "exit $?"; grep -E '"stage": "(trained|load)"|Error|error' $OUT/peer.txt | cut -c1-600
echo "=== end $(date -u +%T)"
