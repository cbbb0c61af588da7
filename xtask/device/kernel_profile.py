"""Summarises an `ncu --csv --metrics gpu__time_duration.sum` log: time per kernel name (top N)
and per coarse class, so a step's GPU time can be split into GEMM / dequantization / attention /
elementwise. Usage: python3 kernel_profile.py ncu.csv [top]"""
import csv
import re
import sys
from collections import defaultdict

CLASSES = [
    ("gemm (cuBLAS)", r"gemm|nvjet|xmma|cutlass|sm90_|sm80_|gemv|splitK|reduce_kernel"),
    ("dequant / quant", r"dequant|nf4|fp4|quant|blockwise"),
    ("attention softmax", r"softmax"),
    ("norm / rope / swiglu / gelu", r"norm|rotary|rope|swiglu|silu|gelu"),
    ("lora / dropout", r"lora|dropout"),
    ("optimizer", r"adam|optim|clip"),
    ("cross entropy", r"cross|entropy|logsumexp"),
]


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
    lines = open(path, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        print("no CSV header in", path)
        print("\n".join(lines[-20:]))
        return
    per = defaultdict(lambda: [0.0, 0])
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(.*", "", row["Kernel Name"])[:90]
        v = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        v *= {"ns": 1e-3, "nsecond": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit, 1e-3)
        per[name][0] += v
        per[name][1] += 1
    total = sum(t for t, _ in per.values())
    print(f"kernels {sum(n for _, n in per.values())}, distinct {len(per)}, total {total / 1e3:.2f} ms")
    cls = defaultdict(float)
    for name, (t, _) in per.items():
        c = next((c for c, rx in CLASSES if re.search(rx, name, re.I)), "other")
        cls[c] += t
    for c, t in sorted(cls.items(), key=lambda x: -x[1]):
        print(f"  {c:32s} {t / 1e3:9.2f} ms {100 * t / total:5.1f} %")
    for name, (t, n) in sorted(per.items(), key=lambda x: -x[1][0])[:top]:
        print(f"{t / 1e3:9.3f} ms {n:5d}x {100 * t / total:5.1f} %  {name}")


main()
