#!/bin/bash
# Session 12's last call (little device time left): the SmolLM2 step of the new build and of the
# session-11 build (loss curves and step times; xtask/device/ab_bench.sh), then the peer on the
# same shape.
source xtask/device/stash.sh
export LD_LIBRARY_PATH=/usr/local/cuda/lib64 QTUNE_KERNEL_CACHE=/tmp/kcache PYTHONPATH=$PWD/.device/site PYTHONUNBUFFERED=1
CASES='smollm2-135m:nf4:all:8:384:adamw' ORDER='new old' ROUNDS=1 T_RUN=45 bash xtask/device/ab_bench.sh 2>&1 | cut -c1-700
m=smollm2-135m
echo "=== peer $(date -u +%T)"
timeout 60 python3 xtask/device/peer_bench.py prepare $m 2>&1 | grep '^{' | cut -c1-200
timeout 70 python3 xtask/device/peer_bench.py train $m nf4-all --batch 8 --seq 384 --optim adamw --no-infer > $OUT/peer_$m.txt 2>&1
echo "exit $?"; grep '^{' $OUT/peer_$m.txt | tail -2 | cut -c1-500
echo "=== done $(date -u +%T)"
