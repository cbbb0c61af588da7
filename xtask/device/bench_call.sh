#!/bin/bash
# One device call of issue 6's benchmark: GPU correctness, ours in $MODES, then the Python peer
# in $PEERS, so ratios come from the same call. Full logs go to $OUT (the device tool brings them
# back); only summary lines are printed (the tool returns the last 12,000 characters).
#
# Prepare here (ignored folder .device/, see shared/notes/gpu.md "Running the peer yourself"):
#   cargo build --release -p xtask --features cuda && mkdir -p .device/bin \
#     && cp target/release/xtask .device/bin/ && cp xtask/device/bench_call.sh .device/ \
#     && cp ../shared/bench/peer_hf.py .device/
#   .device/site: the bitsandbytes 0.50.2 wheel unpacked (cuda130 library only)
#   .device/kcache.tgz (optional): the JIT kernel cache brought back by an earlier call
# Then one device call, carry [".device/bin/xtask", ".device/bench_call.sh", ".device/kcache.tgz",
# ".device/site", ".device/peer_hf.py"], command e.g.
#   MODES='nf4:qv nf4:all int8-blockwise:qv bf16:qv' PEERS='nf4 nf4-all int8 bf16' bash .device/bench_call.sh
# Options: NOCHECK=1 skips gpu-check, PROFILE=1 adds a 4-layer per-kernel profile, DECODE=N,
# DECODE_PROFILE=1 adds the device time of each piece of an NF4 decode step (CUDA graphs),
# DECODE_ONLY=1 times decode in a process that trained nothing first,
# GEMV=1 times the batch-1 products alone (quantized GEMV, LoRA factors, head: GEMV vs cuBLAS).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export QTUNE_KERNEL_CACHE=/tmp/kcache
mkdir -p $QTUNE_KERNEL_CACHE
[ -f .device/kcache.tgz ] && tar xzf .device/kcache.tgz -C $QTUNE_KERNEL_CACHE
X=.device/bin/xtask
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > $OUT/smi.csv) &
SMI=$!
if [ -z "$NOCHECK" ]; then
  echo "=== gpu-check $(date -u +%T)"
  timeout 300 $X bench gpu-check --steps 30 > $OUT/gpucheck.txt 2>&1
  grep -v INFO $OUT/gpucheck.txt | grep -v '"check":"gemm"' | grep -v '"step":' | grep -v '^\s*[0-9]*: ' | cut -c1-600 | tail -12
fi
if [ -n "$GEMV" ]; then
  echo "=== batch-1 products $(date -u +%T)"
  timeout 120 $X bench dequant --decode --iters 20 > $OUT/gemv.txt 2>&1
  grep '"bench":"gemv"' $OUT/gemv.txt | cut -c1-200
fi
for m in ${MODES:-nf4:qv}; do
  set -- ${m%%:*} ${m##*:}
  echo "=== ours $1 $2 $(date -u +%T)"
  timeout 200 $X bench train --quant $1 --targets $2 --warmup 3 --steps 8 --decode ${DECODE:-128} > /tmp/ours_$1_$2.txt 2>&1
  cat /tmp/ours_$1_$2.txt >> $OUT/ours.txt
  grep -E 'tokens_per_s|decode_tok|Error|panicked' /tmp/ours_$1_$2.txt | cut -c1-700
  grep '"step":' /tmp/ours_$1_$2.txt | grep -v '"warmup":true' | sed 's/.*"step_s":\([0-9.]*\).*/\1/' | tr '\n' ' '; echo
done
if [ -n "$PROFILE" ]; then
  echo "=== profile $(date -u +%T)"
  QTUNE_KERNEL_PROFILE=$OUT/profile.txt timeout 100 $X bench train --quant nf4 --targets qv --layers 4 --warmup 1 --steps 2 --decode 0 > $OUT/profile_run.txt 2>&1
  tail -1 $OUT/profile_run.txt | cut -c1-300
fi
if [ -n "$DECODE_ONLY" ]; then
  echo "=== decode without training first $(date -u +%T)"
  timeout 100 $X bench train --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 > $OUT/decode_only.txt 2>&1
  grep -E 'decode_tok|Error|panicked' $OUT/decode_only.txt | cut -c1-700
fi
if [ -n "$DECODE_PROFILE" ]; then
  echo "=== decode step pieces $(date -u +%T)"
  timeout 100 $X bench train --quant nf4 --targets qv --warmup 0 --steps 0 --decode 128 --decode-profile > $OUT/decode_profile.txt 2>&1
  grep decode_piece $OUT/decode_profile.txt | sed 's/"mode":"nf4-qv",//' | cut -c1-200
fi
if [ -n "$PEERS" ] && [ "$PEERS" != none ]; then
  echo "=== peer prepare $(date -u +%T)"
  PYTHONPATH=$PWD/.device/site timeout 150 python3 .device/peer_hf.py prepare > /tmp/peer_prepare.txt 2>&1
  tail -1 /tmp/peer_prepare.txt
  for p in $PEERS; do
    echo "=== peer $p $(date -u +%T)"
    PYTHONPATH=$PWD/.device/site timeout 140 python3 .device/peer_hf.py train $p > /tmp/peer_$p.txt 2>&1
    grep "^{" /tmp/peer_$p.txt >> $OUT/peers.txt
    grep "^{" /tmp/peer_$p.txt | tail -3
  done
fi
kill $SMI
tar czf $OUT/kcache.tgz -C $QTUNE_KERNEL_CACHE .
echo "=== end $(date -u +%T)"
