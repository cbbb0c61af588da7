#!/bin/bash
# gpu_check.sh BIN NAME [TIMEOUT]: `BIN bench gpu-check --steps 30` into $OUT/gpucheck_NAME.txt,
# then its summary: the exit status, failures and panics, the lines of the optimizer's device
# ops, the fused MLP and the head's loss, the row kernels' errors and the tiny loss curve's gap.
set -u
bin=$1 name=$2 f=$OUT/gpucheck_$2.txt
echo "=== gpu-check $name $(date -u +%T)"
timeout ${3:-200} $bin bench gpu-check --steps 30 > $f 2>&1
echo "gpu-check $name exit $?"
grep -E 'panicked|Error|"check":"failed"|"ok":false|tolerance' $f | cut -c1-300 | tail -12
grep -E '"check":"(cat_flat|adam8|fused_mlp|head_|park_)' $f | cut -c1-600
grep -oE '"(cross_entropy|layer_norm|softmax|rms_norm)[a-z0-9_]*":[0-9.e-]*' $f | tr '\n' ' '; echo
grep -E 'tiny_loss_curve.*max_abs' $f | cut -c1-300
