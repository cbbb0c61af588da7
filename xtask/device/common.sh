#!/bin/bash
# Sourced by a device call's script (from session 27 on; the earlier session scripts each carry
# their own copy, kept as they ran): the device's library path, the persistent PTX cache, the
# carried site folder (bitsandbytes for the peer), the call's START, and
# `fits SECONDS WHAT`: true while the call's BUDGET (default 540 s) leaves SECONDS more, else a
# "--- skipped" line and false.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
export PYTHONPATH=$PWD/.device/site
START=$(date +%s)
fits() { [ $(( $(date +%s) - START + $1 )) -le ${BUDGET:-540} ] || { echo "--- skipped ($1 s expected): $2"; false; }; }
# `timed NAME BUILD LIMIT ARGS...`: /tmp/xtask_BUILD ARGS > $OUT/NAME.txt, stopped after LIMIT
# seconds; prints its exit code (124: timed out), its seconds and any panic or error line.
timed() {
  local name=$1 build=$2 limit=$3 s; shift 3; s=$(date +%s)
  timeout $limit /tmp/xtask_$build "$@" > $OUT/$name.txt 2>&1
  echo "$name exit $? ($(( $(date +%s) - s )) s)"
  grep -E 'panicked|rror' $OUT/$name.txt | head -3
}
