#!/bin/bash
# Session 16, call 2: GPT-J's MLP on cuBLASLt epilogues (bias + gelu_new in fc_in's GEMM, the
# activation's derivative in fc_out's dx GEMM) A/B against call 1's build, GPT-J-6B NF4 q,v with
# the GPT-J peer in the same call; batch-1 decode on an empty kernel cache with CubeCL's
# compilation log on stderr (which kernels compile inside which phase), then on the filled
# cache; gpu-check; the decode GEMV's rows-per-plane variants. Parts run in that order while
# BUDGET seconds (default 480) allow.
#   carry [".device"] with bin/xtask.gz (new) and bin/xtask_old.gz (baseline); source stash.sh first
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-480} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
echo "=== A/B gptj $(date -u +%T)"
CASES='gptj-6b:nf4:qv:8:512:default' ROUNDS=${GPTJ_ROUNDS:-2} T_RUN=70 bash xtask/device/ab_bench.sh
if fits 100 "gptj peer"; then
  echo "=== peer gptj nf4 $(date -u +%T)"
  [ -d /tmp/gptj-random ] || timeout 100 python3 .device/peer_hf.py prepare 2>&1 | tail -1
  timeout 90 python3 .device/peer_hf.py train nf4 2>&1 | grep '^{' | head -1 | tee -a $OUT/peers.txt
fi
# Decode with an empty kernel cache, CubeCL logging each compilation on stderr between the
# bench's phase markers; then the same on the cache it filled.
mkdir -p /tmp/clog && printf '[compilation.logger]\nlevel = "basic"\nstderr = true\n' > /tmp/clog/cubecl.toml
rm -rf /tmp/kcache_cold
for run in cold warm; do
  if fits 40 "decode $run"; then
    echo "=== decode $run $(date -u +%T)"
    (cd /tmp/clog && QTUNE_KERNEL_CACHE=/tmp/kcache_cold timeout 90 /tmp/xtask bench train --model gptj-6b \
      --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 > $OUT/decode_$run.txt 2>&1)
    grep -oE '"decode_tok_s_b1[^,]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' $OUT/decode_$run.txt | head -8
    # Compilations per phase (the lines between one marker and the next).
    python3 - $OUT/decode_$run.txt <<'PY'
import sys, re, collections
phase, counts, names = "load+prefill", collections.OrderedDict(), collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"decode (\S+): (.*)", line.strip())
    if m: phase = f"{m.group(1)} {m.group(2)}"; counts.setdefault(phase, 0); continue
    if "[Compiling kernel]" in line:
        counts[phase] = counts.get(phase, 0) + 1
        names[phase][line.split("]", 1)[1].strip()[:60]] += 1
for p, c in counts.items():
    print(f"  {p}: {c} compiled", dict(names[p].most_common(6)) if "warm-up" in p or "timed" in p else "")
PY
  fi
done
if fits 170 "gpu-check"; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 190 /tmp/xtask bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  echo "gpu-check exit $?"
  grep -E '"ok":false|FAIL|panicked|Error|tolerance' $OUT/gpucheck.txt | cut -c1-300 | tail -10
  grep -E 'fused_mlp|gemv|tiny_loss_curve.*max_abs' $OUT/gpucheck.txt | cut -c1-400 | tail -6
fi
if fits 60 "gemv variants"; then
  echo "=== bench kernels (decode gemv) $(date -u +%T)"
  timeout 80 /tmp/xtask bench kernels ${KERNELS_ARGS:-} > $OUT/kernels.txt 2>&1
  grep -i gemv $OUT/kernels.txt | cut -c1-250 | head -20
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
