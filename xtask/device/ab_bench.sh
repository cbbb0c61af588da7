#!/bin/bash
# A/B of two xtask builds in one call: `bench train` for every case, each build in turn, ROUNDS
# times interleaved (so drift on the machine hits both), then the median step of each.
#   carry [".device"] with bin/xtask.xz (new) and bin/xtask_old.xz (baseline; or .gz); source
#   stash.sh first (ORDER='old new dev' adds bin/xtask_dev.xz as a third build)
#   CASES='smollm2-135m:nf4:all:8:384:adamw llama-7b:nf4:qv:8:512:default' ROUNDS=2 bash xtask/device/ab_bench.sh
# (FIRST_ROUND=2 ROUNDS=2 runs the second round alone, e.g. after other work in the same call.)
# A name NAME@FLAG runs build NAME with `--FLAG` (ORDER='old dev dev@offload').
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
# Builds other than `new` (= /tmp/xtask, unpacked by stash.sh): bin/xtask_<name>.xz (or .gz),
# unpacked into /tmp/xtask_<name> (ORDER='old new dev' compares three).
for x in ${ORDER:-old new}; do
  x=${x%@*}
  [ $x = new ] || bash xtask/device/unpack.sh xtask_$x || exit 1
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for c in ${CASES:-smollm2-135m:nf4:all:8:384:adamw}; do
  IFS=: read -r model quant targets b t optim <<< "$c"
  for r in $(seq ${FIRST_ROUND:-1} ${ROUNDS:-2}); do
    for x in ${ORDER:-old new}; do
      X=/tmp/xtask; [ ${x%@*} = new ] || X=/tmp/xtask_${x%@*}
      flag=; [ $x = ${x%@*} ] || flag=--${x#*@}
      out=$(timeout ${T_RUN:-150} $X bench train --model $model --quant $quant --targets $targets --optim $optim \
        --batch $b --seq $t --warmup 3 --steps ${STEPS:-8} --decode 0 $flag 2>&1)
      echo "$out" > $OUT/ab_${model}_${quant}_${targets}_${x/@/_}_$r.txt
      # step_s median, tokens/s, peak GiB in use / reserved; the median forward, recompute +
      # backward and optimizer seconds of the timed steps (and the optimizer's host issue time);
      # then every step's loss (same seeds and batch in both builds: the curves must agree to
      # bf16 noise).
      echo "$c $x round $r $(echo "$out" | python3 -c '
import json, sys, statistics as st
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
d = next((r for r in rows if "step_s_median" in r), {})
t = [r for r in rows if "step" in r and not r.get("warmup")]
m = lambda f: round(st.median(f(r) for r in t), 4) if t else None
print(d.get("step_s_median"), d.get("tokens_per_s"), d.get("peak_in_use_gib_probed"), d.get("peak_reserved_gib"),
      "fwd", m(lambda r: r["forward_s"]), "bwd", m(lambda r: r["recompute_backward_s"]),
      "opt", m(lambda r: r["optimizer_s"]), "opt_issue", m(lambda r: r["issue_s"][2]),
      "losses", [round(r["loss"], 4) for r in rows if "loss" in r and "step" in r])')"
    done
  done
done
