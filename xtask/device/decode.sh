#!/bin/bash
# decode.sh BIN [TIMEOUT] [EXTRA]: batch-1 greedy decode of GPT-J-6B NF4 (`bench train --steps 0
# --decode 128`, 128 new tokens) into $OUT/decode.txt (decode_profile.txt with EXTRA =
# --decode-profile), then its figures: prefill and decode tokens/s, every graph length's tok/s,
# or each piece of the decode step's breakdown with --decode-profile.
set -u
bin=$1 extra=${3:-} f=$OUT/decode.txt
[ -n "$extra" ] && f=$OUT/decode_profile.txt
echo "=== decode ${extra} $(date -u +%T)"
timeout ${2:-90} $bin bench train --model gptj-6b --quant nf4 --targets qv --warmup 0 --steps 0 \
  --decode 128 $extra > $f 2>&1
if [ -n "$extra" ]; then
  grep '^{' $f | grep -oE '"decode_piece":"[^"]*"|"us":[0-9.]*' | paste - - | cut -c1-150
else
  grep -oE '"(prefill_tok_s|decode_tok_s_b1|decode_tok_s_b1_no_graph|decode_tok_s_b1_stepwise)":[0-9.]*|"steps_per_graph":[0-9]*,"tok_s":[0-9.]*|rror.*' \
    $f | tr '\n' ' '; echo
fi
