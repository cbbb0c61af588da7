"""The fused NF4 (+ double quant) GEMM of `../nf4_gemm.rs`, in Triton: its source, the PTX
it ships as, and a probe that times it against cuBLAS.

Writing the PTX (here, no GPU needed: Triton compiles for sm_90a in-process; `pip install
triton==3.9.0 torch numpy`):

    python3 crates/kernels/src/cuda/ptx/nf4_gemm.py aot

writes `nf4_gemm_c{config}_e{epilogue}.ptx` and `kernels.rs` (the table `nf4_gemm.rs` includes)
beside this file, for every config of `SHIPPED` and every epilogue, PTX ISA 8.7 (CUDA 12.8's, so
a CUDA 12.8+ driver loads it).

The kernel's logic on the CPU, under Triton's interpreter (f32 weights: it has no bf16):

    TRITON_INTERPRET=1 python3 crates/kernels/src/cuda/ptx/nf4_gemm.py --check --device cpu \
        --rows 5,130 --shapes 256x128,256x256

The probe, on the device (Triton comes with the image's torch; its Triton may be older than the
one that wrote the shipped PTX, so its timings are of its own compile):

    python3 crates/kernels/src/cuda/ptx/nf4_gemm.py [--out DIR]

Prints JSON lines: per shape and config, the fused kernel's ms and TFLOP/s next to cuBLAS's GEMM
alone on the already dense weight (`x @ w.T`); the fused result against that GEMM on the same
dequantized weight (max error relative to the output's scale); the best config per shape; and,
with --out, the best kernels' PTX and Triton metadata for every epilogue (plain, bias+gelu_new,
bias+add).

The dequantization is qtune's (`crates/kernels/src/cuda/kernels/mod.rs`,
`dequant4_vec_kernel` with `fused`): scale = ftz(nested_map[nested_code] *
nested_absmax[block / 256]) + offset, value = bf16(ftz(NF4[code] * scale)), the high nibble of a
byte first. FMA contraction is off (`enable_fp_fusion=False`), so the product and the offset
round separately, as in the CUDA kernel and the CPU reference.
"""

import argparse
import json
import os
import sys

import torch

try:
    import triton
    import triton.language as tl
except Exception as e:  # the image may lack it
    print(json.dumps({"triton": None, "error": repr(e)}))
    sys.exit(0)

NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
MIN_NORMAL = 1.1754943508222875e-38


@triton.jit
def _ftz(p):
    return tl.where(tl.abs(p) < 1.1754943508222875e-38, p * 0.0, p)


@triton.jit
def _gelu_new(v):
    u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
    # tanh(u) = 1 - 2 / (exp(2u) + 1)
    t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
    return 0.5 * v * (1.0 + t)


@triton.jit(do_not_specialize=["M"])
def nf4_gemm(
    x_ptr, q_ptr, nc_ptr, na_ptr, nmap_ptr, lut_ptr, bias_ptr, add_ptr, y_ptr,
    M, N, K, offset,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, TRANS: tl.constexpr,
    EPI: tl.constexpr, NBS: tl.constexpr, DQ: tl.constexpr = 0,
):
    """y[M, N] = x[M, K] · W[N, K]ᵀ (+ epilogue), W as NF4 codes with double-quant absmax.

    EPI 0: y = acc; 1: y = gelu_new(acc + bias); 2: y = acc + bias + add (add: [M, N]).
    Needs K % BK == 0, BK % 64 == 0, N % BN == 0 (the caller checks); M is any.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    pid_n = pid // num_m  # consecutive programs share a weight tile (read once from HBM)
    pid_m = pid % num_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    offs_kh = tl.arange(0, BK // 2)
    offs_b = tl.arange(0, BK // 64)
    m_ok = offs_m < M
    bpr = K // 64  # absmax blocks per weight row
    if TRANS:
        acc = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        qb = tl.load(q_ptr + offs_n[:, None] * (K // 2) + (k0 // 2 + offs_kh)[None, :])
        hi = (qb >> 4).to(tl.int32)
        lo = (qb & 15).to(tl.int32)
        codes = tl.interleave(hi, lo)  # [BN, BK]: byte j's high nibble is element 2j
        if DQ != 1:
            v = tl.load(lut_ptr + codes)
        blk = offs_n[:, None] * bpr + (k0 // 64 + offs_b)[None, :]  # [BN, BK/64]
        c = tl.load(nc_ptr + blk).to(tl.int32)
        p = _ftz(tl.load(nmap_ptr + c) * tl.load(na_ptr + blk // NBS))
        a = p + offset
        if DQ == 1:
            # The 16 values an absmax block can take, each computed once (the same product and
            # rounding as below, so the same bits), then picked per code: 16 products per 64
            # values instead of 64, and no per-value map load.
            tbl = _ftz(tl.load(lut_ptr + tl.arange(0, 16))[None, None, :] * a[:, :, None])
            tbl = tbl.to(x_ptr.dtype.element_ty)  # [BN, BK/64, 16]
            w = tl.gather(tbl, tl.reshape(codes, (BN, BK // 64, 64)), 2)
            w = tl.reshape(w, (BN, BK))
        elif DQ == 2:
            # The product and its flush to zero as one `mul.rn.ftz.f32` (the compare, select and
            # multiply by 0 of `_ftz` are ~4 instructions a value): the same bits, since a
            # product the reference flushes is flushed here too, a subnormal scale gives ±0 of
            # the same sign both ways, and a normal product rounds the same. Inline PTX: the
            # interpreter cannot run it (the GPU check compares it with config 0 bit for bit).
            vv = tl.reshape(v, (BN, BK // 64, 64))
            w = tl.inline_asm_elementwise("mul.rn.ftz.f32 $0, $1, $2;", "=r,r,r",
                                          [vv, tl.broadcast_to(a[:, :, None], vv.shape)],
                                          dtype=tl.float32, is_pure=True, pack=1)
            w = tl.reshape(w, (BN, BK)).to(x_ptr.dtype.element_ty)
        else:
            w = _ftz(tl.reshape(v, (BN, BK // 64, 64)) * a[:, :, None])
            w = tl.reshape(w, (BN, BK)).to(x_ptr.dtype.element_ty)
        if TRANS:
            xt = tl.load(x_ptr + offs_m[None, :] * K + (k0 + offs_k)[:, None],
                         mask=m_ok[None, :], other=0.0)
            acc = tl.dot(w, xt, acc)
        else:
            xa = tl.load(x_ptr + offs_m[:, None] * K + (k0 + offs_k)[None, :],
                         mask=m_ok[:, None], other=0.0)
            acc = tl.dot(xa, tl.trans(w), acc)
    if TRANS:
        acc = tl.trans(acc)
    if EPI == 1:
        acc = _gelu_new(acc + tl.load(bias_ptr + offs_n).to(tl.float32)[None, :])
    if EPI == 2:
        addv = tl.load(add_ptr + offs_m[:, None] * N + offs_n[None, :], mask=m_ok[:, None],
                       other=0.0)
        acc = acc + tl.load(bias_ptr + offs_n).to(tl.float32)[None, :] + addv.to(tl.float32)
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None])


def make_weight(n, k, gen, dev):
    blocks = n * k // 64
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=dev, generator=gen)
    nc = torch.randint(0, 256, (blocks,), dtype=torch.uint8, device=dev, generator=gen)
    na = (torch.rand((blocks + 255) // 256, device=dev, generator=gen) * 0.02 + 0.01)
    nmap = torch.sort(torch.rand(256, device=dev, generator=gen) * 2 - 1).values.float()
    return q, nc, na.float(), nmap, 0.03


def dequant_ref(q, nc, na, nmap, offset, lut, dtype=torch.bfloat16):
    """qtune's dequant, f32 ops one at a time (no FMA), then `dtype` (bf16; f32 for the
    interpreter, whose kernel keeps the weight in f32 as it has no bf16)."""
    n, kh = q.shape
    codes = torch.stack([(q >> 4), (q & 15)], dim=-1).reshape(n, 2 * kh).long()
    v = lut[codes]
    p = nmap[nc.long()] * na[torch.arange(nc.numel(), device=q.device) // 256]
    p = torch.where(p.abs() < MIN_NORMAL, p * 0.0, p)
    a = (p + offset).reshape(n, -1)
    w = (v.reshape(n, -1, 64) * a[:, :, None]).reshape(n, -1)
    w = torch.where(w.abs() < MIN_NORMAL, w * 0.0, w)
    return w.to(dtype)


def launch(args, m, n, k, cfg, epi, bias=None, add=None, y=None):
    x, q, nc, na, nmap, offset, lut = args
    y = torch.empty((m, n), dtype=x.dtype, device=x.device) if y is None else y
    bias = y if bias is None else bias
    add = y if add is None else add
    bm, bn, bk, trans, warps, stages, dq = (*cfg, 0)[:7]
    grid = (triton.cdiv(n, bn) * triton.cdiv(m, bm),)
    ck = nf4_gemm[grid](x, q, nc, na, nmap, lut, bias, add, y, m, n, k, offset,
                        BM=bm, BN=bn, BK=bk, TRANS=trans, EPI=epi, NBS=256, DQ=dq,
                        num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    return y, ck


# (BM rows of x, BN weight rows, BK, TRANS, warps, stages[, DQ]) compiled into the binary;
# `nf4_gemm.rs` picks one (`QTUNE_NF4_GEMM_CFG` overrides, for timing them). DQ (session 29):
# how each weight value is made, the same bits every way: 0 a map load, a product and `_ftz`;
# 1 each absmax block's 16 values computed once and picked per code by `tl.gather` (warp
# shuffles in the PTX); 2 a map load and one `mul.rn.ftz.f32`. A config with DQ > 0 is the
# same tiles as the config of `TWINS` it names, which must give the same bits (the interpreter
# checks DQ 1, the GPU check all).
SHIPPED = [
    (128, 128, 64, 1, 8, 3),
    (128, 128, 64, 0, 8, 4),
    (256, 128, 64, 1, 8, 3),
    (128, 256, 64, 0, 8, 3),
    (128, 128, 128, 1, 8, 3),
    (64, 128, 64, 1, 4, 4),
    (128, 128, 64, 1, 8, 3, 1),
    (256, 128, 64, 1, 8, 3, 1),
    (128, 128, 64, 1, 8, 3, 2),
    (256, 128, 64, 1, 8, 3, 2),
]
# (config, the config with its tiles and DQ 0).
TWINS = [(c, next(i for i, d in enumerate(SHIPPED) if d == cfg[:6]))
         for c, cfg in enumerate(SHIPPED) if len(cfg) > 6 and cfg[6]]
# What the probe times: the shipped configs, then others worth a look.
CONFIGS = SHIPPED + [
    (128, 128, 64, 1, 4, 4),
    (128, 256, 64, 1, 8, 3),
    (256, 128, 128, 1, 8, 3),
    (128, 128, 64, 0, 4, 4),
    (256, 128, 64, 0, 8, 3),
    (128, 256, 128, 0, 8, 3),
]


def aot(out):
    from triton_aot import compile_ptx

    sig = {"x_ptr": "*bf16", "q_ptr": "*u8", "nc_ptr": "*u8", "na_ptr": "*fp32",
           "nmap_ptr": "*fp32", "lut_ptr": "*fp32", "bias_ptr": "*bf16", "add_ptr": "*bf16",
           "y_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "offset": "fp32"}
    for c in ("BM", "BN", "BK", "TRANS", "EPI", "NBS", "DQ"):
        sig[c] = "constexpr"
    # Pointers 16-byte aligned, N and K multiples of 16 (`nf4_gemm.rs` checks both); M any.
    attrs = {(i,): [["tt.divisibility", 16]] for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]}
    rows = []
    for ci, cfg in enumerate(SHIPPED):
        bm, bn, bk, trans, warps, stages, dq = (*cfg, 0)[:7]
        kernels = []
        for epi in range(3):
            const = {"BM": bm, "BN": bn, "BK": bk, "TRANS": trans, "EPI": epi, "NBS": 256,
                     "DQ": dq}
            kernels.append(compile_ptx(out, f"nf4_gemm_c{ci}_e{epi}.ptx", nf4_gemm, sig, const,
                                       attrs, (bm, bn, bk), warps, stages, fp_fusion=False))
        rows.append("    [\n" + "\n".join(kernels) + "\n    ],")
    with open(os.path.join(out, "kernels.rs"), "w") as f:
        f.write("// Written by nf4_gemm.py aot (Triton " + triton.__version__ + "); do not edit.\n")
        f.write("// Per config of SHIPPED (BM, BN, BK, TRANS, warps, stages[, DQ]): the kernel of each\n")
        f.write("// epilogue (plain, bias + gelu_new, bias + add).\n")
        for ci, c in enumerate(SHIPPED):
            f.write(f"// config {ci}: {c}\n")
        f.write(f"const KERNELS: [[Kernel; 3]; {len(SHIPPED)}] = [\n" + "\n".join(rows) + "\n];\n")
        f.write("// (config, the config of the same tiles making its weight values the plain way):\n")
        f.write("// each pair must give the same bits.\n")
        twins = ", ".join(f"({a}, {b})" for a, b in TWINS)
        f.write(f"const TWINS: [(usize, usize); {len(TWINS)}] = [{twins}];\n")


def main():
    if sys.argv[1:2] == ["aot"]:
        aot(os.path.dirname(os.path.abspath(__file__)))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default="512")
    ap.add_argument("--shapes", default="4096x4096,16384x4096,4096x16384")
    ap.add_argument("--check", action="store_true",
                    help="results only, no timing (TRITON_INTERPRET=1 on the CPU: --device cpu)")
    ap.add_argument("--device", default="cuda")
    ops = ap.parse_args()
    dev = ops.device
    if ops.check:
        check(ops, dev)
        return
    print(json.dumps({"triton": triton.__version__, "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name()}), flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    lut = torch.tensor(NF4, dtype=torch.float32, device=dev)
    best = {}
    for rows in [int(r) for r in ops.rows.split(",")]:
        for shape in ops.shapes.split(","):
            n, k = (int(s) for s in shape.split("x"))
            q, nc, na, nmap, offset = make_weight(n, k, gen, dev)
            x = (torch.randn((rows, k), device=dev, generator=gen) * 0.5).to(torch.bfloat16)
            wd = dequant_ref(q, nc, na, nmap, offset, lut)
            ref = x @ wd.T
            ms_ref = triton.testing.do_bench(lambda: x @ wd.T, return_mode="median")
            flop = 2.0 * rows * n * k
            print(json.dumps({"rows": rows, "n": n, "k": k, "cublas_ms": round(ms_ref, 5),
                              "cublas_tflops": round(flop / ms_ref / 1e9, 1)}), flush=True)
            args = (x, q, nc, na, nmap, offset, lut)
            scale = ref.float().abs().max().item()
            for cfg in CONFIGS:
                if k % cfg[2] or n % cfg[1]:
                    continue
                try:
                    y, _ = launch(args, rows, n, k, cfg, 0)
                    err = (y.float() - ref.float()).abs().max().item() / scale
                    ms = triton.testing.do_bench(lambda: launch(args, rows, n, k, cfg, 0),
                                                 return_mode="median")
                except Exception as e:
                    print(json.dumps({"cfg": cfg, "error": repr(e)[:300]}), flush=True)
                    continue
                print(json.dumps({"rows": rows, "n": n, "k": k, "cfg": cfg,
                                  "ms": round(ms, 5), "tflops": round(flop / ms / 1e9, 1),
                                  "vs_cublas": round(ms_ref / ms, 3),
                                  "max_err_rel": err}), flush=True)
                key = (rows, n, k)
                if err < 2e-2 and (key not in best or ms < best[key][1]):
                    best[key] = (cfg, ms)
            if (rows, n, k) in best:
                cfg, ms = best[(rows, n, k)]
                print(json.dumps({"best": [rows, n, k], "cfg": cfg, "ms": round(ms, 5),
                                  "vs_cublas": round(ms_ref / ms, 3)}), flush=True)
            # The epilogues, checked on the best config.
            if (rows, n, k) in best:
                cfg = best[(rows, n, k)][0]
                bias = (torch.randn(n, device=dev, generator=gen) * 0.1).to(torch.bfloat16)
                add = torch.randn((rows, n), device=dev, generator=gen).to(torch.bfloat16)
                y1, ck1 = launch(args, rows, n, k, cfg, 1, bias=bias)
                r1 = torch.nn.functional.gelu(ref.float() + bias.float(), approximate="tanh")
                y2, ck2 = launch(args, rows, n, k, cfg, 2, bias=bias, add=add)
                r2 = ref.float() + bias.float() + add.float()
                e1 = (y1.float() - r1).abs().max().item() / r1.abs().max().item()
                e2 = (y2.float() - r2).abs().max().item() / r2.abs().max().item()
                print(json.dumps({"epilogues": [rows, n, k], "gelu_err_rel": e1,
                                  "add_err_rel": e2}), flush=True)
                if ops.out:
                    _, ck0 = launch(args, rows, n, k, cfg, 0)
                    for epi, ck in enumerate([ck0, ck1, ck2]):
                        dump(ops.out, f"nf4_gemm_r{rows}_{n}x{k}_e{epi}", ck, cfg)


def check(ops, dev):
    """The fused kernel and its epilogues against the reference, small shapes, every shipped
    config (the interpreter ignores warps and stages: it checks the tiles and the code)."""
    gen = torch.Generator(device=dev).manual_seed(0)
    lut = torch.tensor(NF4, dtype=torch.float32, device=dev)
    for rows in [int(r) for r in ops.rows.split(",")]:
        for shape in ops.shapes.split(","):
            n, k = (int(s) for s in shape.split("x"))
            q, nc, na, nmap, offset = make_weight(n, k, gen, dev)
            dt = torch.float32 if dev == "cpu" else torch.bfloat16  # the interpreter: no bf16
            x = (torch.randn((rows, k), device=dev, generator=gen) * 0.5).to(dt)
            wd = dequant_ref(q, nc, na, nmap, offset, lut, dt)
            ref = x.float() @ wd.float().T
            args = (x, q, nc, na, nmap, offset, lut)
            bias = (torch.randn(n, device=dev, generator=gen) * 0.1).to(dt)
            add = torch.randn((rows, n), device=dev, generator=gen).to(dt)
            for cfg in SHIPPED:
                if k % cfg[2] or n % cfg[1]:
                    continue
                if dev == "cpu" and len(cfg) > 6 and cfg[6] == 2:
                    print(json.dumps({"cfg": cfg, "SKIPPED": "inline PTX: the interpreter "
                                      "cannot run it (the GPU check compares it bit for bit)"}))
                    continue
                y0, _ = launch(args, rows, n, k, cfg, 0)
                y1, _ = launch(args, rows, n, k, cfg, 1, bias=bias)
                y2, _ = launch(args, rows, n, k, cfg, 2, bias=bias, add=add)
                r1 = torch.nn.functional.gelu(ref + bias.float(), approximate="tanh")
                r2 = ref + bias.float() + add.float()
                errs = [((y.float() - r).abs().max() / r.abs().max()).item()
                        for y, r in [(y0, ref), (y1, r1), (y2, r2)]]
                line = {"rows": rows, "n": n, "k": k, "cfg": cfg, "err_rel": errs}
                if len(cfg) > 6 and cfg[6]:
                    # Another way to the same weight values: the same result as the same tiles
                    # with DQ 0, bit for bit.
                    plain, _ = launch(args, rows, n, k, cfg[:6], 0)
                    line["same_as_twin"] = torch.equal(y0, plain)
                    if not line["same_as_twin"]:
                        sys.exit(f"nf4_gemm: DQ {cfg[6]} changed the result: {line}")
                print(json.dumps(line), flush=True)


def dump(out, name, ck, cfg):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".ptx"), "w") as f:
        f.write(ck.asm["ptx"])
    md = ck.metadata
    d = md._asdict() if hasattr(md, "_asdict") else dict(getattr(md, "__dict__", {}))
    d["cfg"] = cfg
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(d, f, default=str, indent=1)
    entry = [ln for ln in ck.asm["ptx"].splitlines() if ".entry" in ln or ".param" in ln]
    print(json.dumps({"dumped": name, "entry": entry[:20], "shared": d.get("shared"),
                      "num_warps": d.get("num_warps")}), flush=True)


if __name__ == "__main__":
    main()
