"""The fused attention forward of `../flash_attn.rs`, in Triton: its source, the PTX it ships
as, and a probe that times it against qtune's unfused path's shape and torch's SDPA.

Writing the PTX (here, no GPU needed; `pip install triton==3.9.0 torch numpy`):

    python3 crates/kernels/src/cuda/ptx/flash_attn.py aot

writes `flash_attn_d{HD}_m{MASKED}_c{config}.ptx` and `flash_kernels.rs` (the table
`flash_attn.rs` includes) beside this file, PTX ISA 8.7 for sm_90a.

The kernel's logic on the CPU, under Triton's interpreter (f32: it has no bf16):

    TRITON_INTERPRET=1 python3 crates/kernels/src/cuda/ptx/flash_attn.py --check --device cpu

The probe, on the device (the image's Triton compiles its own copy):

    python3 crates/kernels/src/cuda/ptx/flash_attn.py

The contract is `QBackend::q_attention`'s output (`crates/kernels/src/backend.rs`): token-major
`q [B, T, H, hd]`, `k, v [B, L, H_kv, hd]`, `o [B, T, H, hd]`, query head `h` reading kv head
`h / (H / H_kv)`; scores in f32, times `1/div`, set to `f32::MIN` where `mask [B, 1, T, L]` (u8,
non-zero = masked) is set, so a fully masked row comes out uniform. The softmax is online (one
pass over the keys, FlashAttention's): the probabilities enter the second product in bf16 before
their normalisation, where the unfused path rounds them after it, so the two agree to bf16's
rounding, not bit for bit.
"""

import argparse
import json
import math
import os
import sys

import torch

try:
    import triton
    import triton.language as tl
except Exception as e:  # the image may lack it
    print(json.dumps({"triton": None, "error": repr(e)}))
    sys.exit(0)

F32_MIN = tl.constexpr(-3.4028234663852886e38)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit(do_not_specialize=["T", "L", "H", "HKV"])
def flash_attn(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr,
    T, L, H, HKV, inv_div,
    BM: tl.constexpr, BN: tl.constexpr, HD: tl.constexpr, MASKED: tl.constexpr,
    SKIP: tl.constexpr = 1,
):
    """One program: BM query rows of one (batch row, head), every key in tiles of BN."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    g = h // (H // HKV)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, HD)
    m_ok = offs_m < T
    q_base = q_ptr + b * T * H * HD + h * HD
    kv_off = b * L * HKV * HD + g * HD
    q = tl.load(q_base + offs_m[:, None] * (H * HD) + offs_d[None, :], mask=m_ok[:, None],
                other=0.0)
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, HD), dtype=tl.float32)
    lo = pid_m * 0
    hi = L + 0
    if MASKED and SKIP:
        # The keys this block's rows can see: from the first tile holding any row's first
        # unmasked key to any row's last one (causal: the diagonal). The tiles outside hold only
        # masked keys for every row, whose exp(f32::MIN − max) is exactly 0 once a row has an
        # unmasked key, so skipping them changes no bit (`--check` compares with SKIP=0 for
        # equality). A row with none (fully masked: uniform over all L) keeps every tile.
        first = tl.full((BM,), 2147483647, dtype=tl.int32)
        last = tl.full((BM,), -1, dtype=tl.int32)
        for n0 in range(0, L, BN):
            cols = n0 + offs_n
            mk = tl.load(mask_ptr + b * T * L + offs_m[:, None] * L + cols[None, :],
                         mask=m_ok[:, None] & (cols < L)[None, :], other=1)
            free = mk == 0
            first = tl.minimum(first, tl.min(tl.where(free, cols[None, :], 2147483647), 1))
            last = tl.maximum(last, tl.max(tl.where(free, cols[None, :], -1), 1))
        empty = tl.sum((m_ok & (last < 0)).to(tl.int32), 0)
        if empty == 0:
            lo = tl.min(tl.where(m_ok, first, 2147483647), 0) // BN * BN
            hi = tl.max(tl.where(m_ok, last, -1), 0) + 1
    for n0 in range(lo, hi, BN):
        cols = n0 + offs_n
        n_ok = cols < L
        kt = tl.load(k_ptr + kv_off + cols[:, None] * (HKV * HD) + offs_d[None, :],
                     mask=n_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kt)) * inv_div
        if MASKED:
            mk = tl.load(mask_ptr + b * T * L + offs_m[:, None] * L + cols[None, :],
                         mask=m_ok[:, None] & n_ok[None, :], other=1)
            s = tl.where(mk != 0, F32_MIN, s)
        # Keys past L never count, not even in a fully masked row (masked keys do: uniform).
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2((m_i - m_new) * LOG2E)
        p = tl.exp2((s - m_new[:, None]) * LOG2E)
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_ptr + kv_off + cols[:, None] * (HKV * HD) + offs_d[None, :],
                     mask=n_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(vt.dtype), vt, acc)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(o_ptr + b * T * H * HD + h * HD + offs_m[:, None] * (H * HD) + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])


def launch(q, k, v, mask, div, cfg, skip=1):
    """`o` for token-major q, k, v and an optional u8 mask [B, 1, T, L]."""
    b, t, h, hd = q.shape
    l, hkv = k.shape[1], k.shape[2]
    bm, bn, warps, stages = cfg
    o = torch.empty_like(q)
    masked = mask is not None
    mptr = mask if masked else o
    grid = (triton.cdiv(t, bm), b * h)
    flash_attn[grid](q, k, v, mptr, o, t, l, h, hkv, 1.0 / div, BM=bm, BN=bn, HD=hd,
                     MASKED=int(masked), SKIP=skip, num_warps=warps, num_stages=stages)
    return o


def reference(q, k, v, mask, div):
    """The unfused path's order: f32 scores / div, masked to f32::MIN, softmax, p in v's dtype,
    then p · v summed in f32."""
    b, t, h, hd = q.shape
    hkv = k.shape[2]
    rep = h // hkv
    qh = q.permute(0, 2, 1, 3).float()
    kh = k.permute(0, 2, 1, 3).float().repeat_interleave(rep, dim=1)
    vh = v.permute(0, 2, 1, 3).repeat_interleave(rep, dim=1)
    s = (qh @ kh.transpose(-1, -2)) * (1.0 / div)
    if mask is not None:
        s = torch.where(mask.bool(), torch.tensor(F32_MIN.value, device=s.device), s)
    p = torch.softmax(s, dim=-1).to(v.dtype)
    o = p.float() @ vh.float()
    return o.permute(0, 2, 1, 3).to(q.dtype)


def causal_mask(b, t, l, pad, dev):
    """[B, 1, T, L] u8: causal over the last T of L keys; batch row r has its first `pad[r]`
    keys padded (left padding, as generation's); a padded query row is fully masked."""
    i = torch.arange(t, device=dev)[:, None] + (l - t)
    j = torch.arange(l, device=dev)[None, :]
    m = (j > i).expand(b, t, l).clone()
    for r, p in enumerate(pad):
        m[r, :, :p] = True
    return m[:, None].to(torch.uint8).contiguous()


# (BM query rows, BN keys per tile, warps, stages) per head dim, compiled into the binary;
# `flash_attn.rs` picks config 0 unless `QTUNE_FLASH_ATTN_CFG` says (for timing them). Chosen
# here by `ptxas -v` alone (no spills with the mask but 64 and 120 bytes in two of head dim
# 256's; BM 64 gives 128 programs at 512 rows and 16 heads, one wave on 132 SMs); not timed.
SHIPPED = {
    64: [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4)],
    128: [(64, 64, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3)],
    256: [(64, 32, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2)],
}
# What the probe also times (spilling under ptxas, or with half the programs at 512 rows).
EXTRA = {
    64: [(128, 128, 8, 3), (128, 64, 4, 3)],
    128: [(128, 64, 8, 3), (128, 128, 8, 2)],
    256: [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)],
}


def aot(out):
    from triton_aot import compile_ptx

    sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "mask_ptr": "*u8",
           "o_ptr": "*bf16", "T": "i32", "L": "i32", "H": "i32", "HKV": "i32",
           "inv_div": "fp32"}
    for c in ("BM", "BN", "HD", "MASKED", "SKIP"):
        sig[c] = "constexpr"
    # Every pointer 16-byte aligned (`flash_attn.rs` checks); the sizes any.
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(5)}
    rows = []
    for hd, cfgs in SHIPPED.items():
        for ci, (bm, bn, warps, stages) in enumerate(cfgs):
            kernels = [
                compile_ptx(out, f"flash_attn_d{hd}_m{masked}_c{ci}.ptx", flash_attn, sig,
                            {"BM": bm, "BN": bn, "HD": hd, "MASKED": masked, "SKIP": 1}, attrs,
                            (bm, bn, hd), warps, stages, fp_fusion=True)
                for masked in (0, 1)
            ]
            rows.append(f"    // head dim {hd}, config {ci}: {(bm, bn, warps, stages)}\n"
                        f"    ({hd}, [\n" + "\n".join(kernels) + "\n    ]),")
    with open(os.path.join(out, "flash_kernels.rs"), "w") as f:
        f.write("// Written by flash_attn.py aot (Triton " + triton.__version__
                + "); do not edit.\n")
        f.write("// Per (head dim, config (BM, BN, warps, stages)): the kernel without and with a\n")
        f.write("// mask. Configs of one head dim are consecutive, config 0 first.\n")
        f.write(f"const FLASH_KERNELS: [(usize, [Kernel; 2]); {len(rows)}] = [\n"
                + "\n".join(rows) + "\n];\n")


def check(ops, dev):
    """Every shipped config against the reference, with and without masks, GQA, past keys,
    a fully masked row, sizes off the tiles."""
    gen = torch.Generator(device=dev).manual_seed(0)
    dt = torch.float32 if dev == "cpu" else torch.bfloat16
    worst = 0.0
    cases = [  # b, t, l, h, hkv, pad
        (1, 37, 37, 2, 2, [0]),
        (2, 70, 70, 4, 2, [0, 5]),
        (2, 9, 140, 3, 1, [3, 0]),
        (1, 130, 130, 2, 1, [0]),
        (1, 20, 200, 2, 2, [130]),
    ]
    for hd, cfgs in SHIPPED.items():
        if ops.head_dims and hd not in ops.head_dims:
            continue
        for (b, t, l, h, hkv, pad) in cases:
            q = (torch.randn((b, t, h, hd), device=dev, generator=gen)).to(dt)
            k = (torch.randn((b, l, hkv, hd), device=dev, generator=gen)).to(dt)
            v = (torch.randn((b, l, hkv, hd), device=dev, generator=gen)).to(dt)
            for masked in (False, True):
                mask = causal_mask(b, t, l, pad, dev) if masked else None
                ref = reference(q, k, v, mask, math.sqrt(hd)).float()
                for cfg in cfgs:
                    o = launch(q, k, v, mask, math.sqrt(hd), cfg)
                    # Skipping the fully masked tiles must change no bit.
                    same = torch.equal(o, launch(q, k, v, mask, math.sqrt(hd), cfg, skip=0))
                    o = o.float()
                    err = ((o - ref).abs().max() / ref.abs().max()).item()
                    worst = max(worst, err if same else float("inf"))
                    print(json.dumps({"hd": hd, "case": [b, t, l, h, hkv, pad], "masked": masked,
                                      "cfg": cfg, "err_rel": err, "skip_exact": same}),
                          flush=True)
    print(json.dumps({"worst_err_rel": worst}), flush=True)
    if worst > ops.tol:
        sys.exit(f"flash_attn: error {worst} above {ops.tol}")


def probe(ops, dev):
    """Each config (shipped, then `EXTRA`) against torch's SDPA (causal), its error against the
    unfused path's math."""
    print(json.dumps({"triton": triton.__version__, "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name()}), flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    for t in [int(r) for r in ops.rows.split(",")]:
        for hd, h in [(256, 16), (128, 32), (64, 9)]:
            hkv = 3 if hd == 64 else h
            q = torch.randn((1, t, h, hd), device=dev, generator=gen).to(torch.bfloat16)
            k = torch.randn((1, t, hkv, hd), device=dev, generator=gen).to(torch.bfloat16)
            v = torch.randn((1, t, hkv, hd), device=dev, generator=gen).to(torch.bfloat16)
            mask = causal_mask(1, t, t, [0], dev)
            ref = reference(q, k, v, mask, math.sqrt(hd)).float()
            qs, ks, vs = (x.permute(0, 2, 1, 3) for x in (q, k, v))
            sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                qs, ks, vs, is_causal=True, enable_gqa=hkv != h)
            ms_sdpa = triton.testing.do_bench(sdpa, return_mode="median")
            print(json.dumps({"rows": t, "hd": hd, "heads": [h, hkv],
                              "sdpa_causal_ms": round(ms_sdpa, 5)}), flush=True)
            for cfg in SHIPPED[hd] + EXTRA[hd]:
                try:
                    o = launch(q, k, v, mask, math.sqrt(hd), cfg).float()
                    err = ((o - ref).abs().max() / ref.abs().max()).item()
                    ms = triton.testing.do_bench(
                        lambda: launch(q, k, v, mask, math.sqrt(hd), cfg), return_mode="median")
                except Exception as e:
                    print(json.dumps({"cfg": cfg, "error": repr(e)[:300]}), flush=True)
                    continue
                print(json.dumps({"rows": t, "hd": hd, "cfg": cfg, "shipped": cfg in SHIPPED[hd],
                                  "ms": round(ms, 5),
                                  "vs_sdpa": round(ms_sdpa / ms, 3), "max_err_rel": err}),
                      flush=True)


def main():
    if sys.argv[1:2] == ["aot"]:
        aot(os.path.dirname(os.path.abspath(__file__)))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="512")
    ap.add_argument("--check", action="store_true",
                    help="results only (TRITON_INTERPRET=1 on the CPU: --device cpu)")
    ap.add_argument("--head-dims", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--device", default="cuda")
    ops = ap.parse_args()
    if ops.check:
        check(ops, ops.device)
    else:
        probe(ops, ops.device)


if __name__ == "__main__":
    main()
