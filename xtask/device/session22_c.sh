#!/bin/bash
# Session 22, call 2: where the pool's reservation exceeds the bytes in use (issue 19's
# "reserved <= in use + 10 %"). cubecl's memory logger at level "full" (a cubecl.toml in the
# working directory; no rebuild) prints every pool's pages whenever a new page is allocated;
# the last such report before the end of the run holds the reservation at its largest. The
# Python below prints each pool's in-use and reserved bytes from the report with the most
# reserved, and the persistent pool's.
#   carry [".device"] with bin/xtask_$NEW.xz; source stash.sh first, then
#   NEW=main bash xtask/device/session22_c.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} QTUNE_KERNEL_CACHE=/tmp/kcache
START=$(date +%s)
NEW=${NEW:?NEW=the build to run}
bash xtask/device/unpack.sh xtask_$NEW || exit 1
mkdir -p /tmp/memlog && cd /tmp/memlog
for o in "" --offload; do
  rm -f mem.log
  printf '[memory.logger]\nlevel = "full"\nfile = "/tmp/memlog/mem.log"\nappend = false\n' > cubecl.toml
  timeout 150 /tmp/xtask_$NEW bench train --model gptj-6b --quant nf4 --targets qv --warmup 1 \
    --steps 2 --decode 0 $o > run$o.txt 2>&1
  echo "run$o exit $? $(grep -oE '"(tokens_per_s|peak_in_use_gib_probed|peak_reserved_gib)":[0-9.]*|rror.*' run$o.txt | tr '\n' ' ') log $(du -h mem.log | cut -f1)"
  python3 - mem.log <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
reports = text.split("# MemoryManagement")[1:]
def unit(s):
    n, u = s.split()
    return float(n) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}.get(u, 1)
best, best_r = None, -1
for r in reports:
    m = re.findall(r"Total bytes reserved: ([0-9.]+ \w+)", r)
    if m and unit(m[-1]) > best_r:
        best, best_r = r, unit(m[-1])
print(f"{len(reports)} reports; largest reservation {best_r/2**30:.3f} GiB")
if best is None: sys.exit()
# per pool: header line then pages then a usage report
for block in re.split(r"\n(?= - Exclusive Pool| - Sliced Pool|## )", best):
    head = block.strip().splitlines()[0] if block.strip() else ""
    pages = re.findall(r"Page ([0-9.]+ \w+) is_free=(\w+)", block)
    use = re.findall(r"Bytes in use: ([0-9.]+ \w+)", block)
    res = re.findall(r"Total bytes reserved: ([0-9.]+ \w+)", block)
    nalloc = re.findall(r"Number of allocations: (\d+)", block)
    if res:
        free = sum(1 for _, f in pages if f == "true")
        print(f"{head[:60]:60s} pages {len(pages):4d} free {free:4d} allocs {nalloc[-1] if nalloc else '?':>5s} in_use {use[-1]:>12s} reserved {res[-1]:>12s}")
        if pages and unit(res[-1]) - unit(use[-1]) > 20e6:
            from collections import Counter
            c = Counter((s, f) for s, f in pages)
            print("    pages (size, free): " + ", ".join(f"{s}/{'F' if f == 'true' else 'U'}x{n}" for (s, f), n in c.most_common(10)))
    elif head.startswith("- Slices") or "Slices" in block:
        pass
sl = re.findall(r"Slices ([0-9.]+ \w+) =>  (\d+) free - (\d+) full - (\d+) total", best)
print("persistent slices:", len(sl), "sizes; free", sum(int(x[1]) for x in sl))
PY
  cp run$o.txt $OUT/ 2>/dev/null
  grep -n "Total bytes reserved" mem.log | tail -1
done
echo "=== end $(date -u +%T) ($(( $(date +%s) - START )) s)"
