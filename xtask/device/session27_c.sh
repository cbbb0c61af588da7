#!/bin/bash
# Session 27's last call: the whole gpu-check of main as the session leaves it (its one kernel
# change, b881028's `load_strided`, was checked in call 1 by the `fused` and `llama_family`
# groups; this runs every group once more on main's own build).
# ONLY=group,group… runs those groups only (for the time left).
# Build: main, as session27_a.sh's, into .device/bin/xtask_main.xz.
#   carry [".device"]; source xtask/device/stash.sh first, then
#   BUDGET=420 bash xtask/device/session27_c.sh
set -uo pipefail
source xtask/device/common.sh
bash xtask/device/unpack.sh xtask_main || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if fits 100 "gpu-check"; then
  timed check main $(( ${BUDGET:-540} - 40 )) bench gpu-check --steps 30 ${ONLY:+--only $ONLY}
  grep -E '"check":"(failed|skipped)"|"ok":false' $OUT/check.txt | cut -c1-300
  grep -c '"check"' $OUT/check.txt
  tail -2 $OUT/check.txt | cut -c1-300
fi
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
