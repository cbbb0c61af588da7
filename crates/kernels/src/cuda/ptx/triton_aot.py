"""What `nf4_gemm.py aot` and `flash_attn.py aot` share: one Triton kernel compiled here (no GPU)
to PTX for sm_90a, written beside this file, and its row of the Rust launch table (`Kernel` in
`../triton.rs`)."""

import os

import triton

# CUDA 12.8's PTX ISA: any CUDA 12.8+ driver JIT-compiles it.
PTX_VERSION = 87


def compile_ptx(out, name, fn, sig, const, attrs, tile, warps, stages, fp_fusion):
    """Compiles `fn` with `const`, writes `out/name` and returns its `Kernel { .. }` literal.
    Asserts what `triton.rs` relies on: no scratch memory (it passes null), one CTA per
    cluster (it launches no clusters)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # No line info: the PTX stays the same when the Python around the kernel changes, and smaller.
    triton.knobs.compilation.disable_line_info = True
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": warps, "num_stages": stages,
                                 "enable_fp_fusion": fp_fusion, "ptx_version": PTX_VERSION})
    md = ck.metadata._asdict()
    assert md["global_scratch_size"] == 0 and md["profile_scratch_size"] == 0, md
    assert md["num_ctas"] == 1, md
    with open(os.path.join(out, name), "w") as f:
        f.write(ck.asm["ptx"])
    t = ", ".join(str(v) for v in tile)
    return f"""        Kernel {{
            ptx: include_str!("{name}"),
            name: "{md['name']}",
            tile: [{t}],
            warps: {warps},
            shared: {md['shared']},
        }},"""
