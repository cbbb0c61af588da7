//! `#[cube]` kernels: blockwise dequantization (8-bit, NF4, FP4, plain or nested absmax) and
//! quantization, each mirroring `qtune-quant`'s CPU reference operation for operation; the
//! batch-1 decode GEMVs in `gemv.rs` and `dense_gemv.rs`.
//!
//! Exactness rules (the CPU reference follows bitsandbytes' `--use_fast_math` build):
//! - every float product is flushed to zero when subnormal ([`ftz`]), as the reference's `ftz`;
//! - no `a*b+c` appears in one expression: NVRTC contracts those into FMAs by default, which
//!   rounds once instead of twice. The nested absmax product is therefore written to memory by
//!   [`nested_product_kernel`] and the offset added in the dequant kernel (bitsandbytes also
//!   does the product in a kernel and the `+ offset` in a separate torch op);
//! - the quantizers multiply by a per-block scale from [`rcp_kernel`]: bnb's `rcp.approx.ftz.f32`
//!   reproduced bit for bit as the reference's `Reciprocal::BnbCuda` does (IEEE `1.0 / absmax`,
//!   NVRTC's default `-prec-div=true`, plus the measured ±1-ulp delta of the absmax's mantissa
//!   from `qtune_quant::rcp::table_words`), so GPU codes equal bnb's; with `bnb = false` it is
//!   the reference's `Reciprocal::Ieee`. The dequant kernels have no division.

// `#[cube]` locals must be initialized before branches assign them.
#![allow(unused_assignments)]

use cubecl::prelude::*;

mod dense_gemv;
mod gemv;

pub use dense_gemv::{dense_gemv_kernel, dense_gemv_parts_kernel, LANE_ROW_VECS};
pub use gemv::{gemv_kernel, gemv_parts_kernel, GEMV_ROWS};

/// √(2/π), HF `NewGELUActivation`'s constant.
pub const GELU_C: f32 = 0.797_884_6;

/// `tanh(√(2/π)·(v + 0.044715·v³))`, `gelu_new`'s term shared by its forward and gradient (the
/// fused kernel in `fused/gelu.rs`) and the decode GEMV's activation epilogue.
#[cube]
pub fn gelu_tanh(v: f32) -> f32 {
    f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v))
}

/// Smallest normal f32: below it, a product is flushed to a signed zero.
const MIN_NORMAL: f32 = 1.175_494_4e-38;

/// Flush a subnormal to a zero of the same sign (`qtune_quant` `ftz`).
#[cube]
pub fn ftz(x: f32) -> f32 {
    select(f32::abs(x) < MIN_NORMAL, x * 0.0f32, x)
}

/// `prod[i] = ftz(map[codes[i]] * nested_absmax[i / nested_blocksize])` for the double-quantized
/// absmax; the `+ offset` happens in the dequant kernels (two roundings, like the reference).
#[cube(launch_unchecked)]
pub fn nested_product_kernel(
    codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    map: &Array<f32>,
    prod: &mut Array<f32>,
    count: usize,
    #[comptime] nested_blocksize: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= count {
        terminate!();
    }
    let c = usize::cast_from(codes[i]);
    prod[i] = ftz(map[c] * nested_absmax[i / nested_blocksize]);
}

/// Scale of the block holding element `i`: plain absmax, or nested product + offset.
#[cube]
fn block_scale(
    absmax: &Array<f32>,
    i: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
) -> f32 {
    let a = absmax[i / blocksize];
    if nested {
        a + offset
    } else {
        a
    }
}

/// 4-bit dequant: each unit handles `words_per_unit` `u32` words of codes (8 values each: 4
/// bytes little-endian, value 2j in the high nibble of byte j), word `t + k·num_units` for
/// coalescing, each written as one `Vector<F, 8>` store. Needs `numel % 8 == 0`, cube size ≥ 16.
///
/// `fused` (double quant only) computes the block scale in-kernel from the nested codes instead
/// of reading [`nested_product_kernel`]'s output: `select`-based [`ftz`] sits between the
/// product and the `+ offset`, which keeps them two roundings (checked bit for bit on the GPU).
#[cube(launch_unchecked)]
pub fn dequant4_vec_kernel<F: Float, N: Size>(
    codes: &Array<u32>,
    absmax: &Array<f32>,
    nested_codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    nested_map: &Array<f32>,
    map: &Array<f32>,
    out: &mut Array<Vector<F, N>>,
    num_words: usize,
    num_units: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
    #[comptime] words_per_unit: usize,
) {
    let mut lut = SharedMemory::<f32>::new(16usize);
    if UNIT_POS < 16 {
        lut[UNIT_POS as usize] = map[UNIT_POS as usize];
    }
    sync_cube();
    let t = ABSOLUTE_POS;
    if t >= num_units {
        terminate!();
    }
    #[unroll]
    for k in 0..words_per_unit {
        let w = t + k * num_units;
        if w < num_words {
            let word = codes[w];
            let mut a = 0.0f32;
            if fused {
                let blk = (w * 8) / blocksize;
                let c = usize::cast_from(nested_codes[blk]);
                let p = ftz(nested_map[c] * nested_absmax[blk / nested_blocksize]);
                a = p + offset;
            } else {
                a = block_scale(absmax, w * 8, offset, blocksize, nested);
            }
            let mut v = Vector::<F, N>::empty();
            #[unroll]
            for b in 0..4u32 {
                let byte = (word >> (b * 8)) & 255u32;
                let hi = lut[(byte >> 4) as usize];
                let lo = lut[(byte & 15u32) as usize];
                v[(2 * b) as usize] = F::cast_from(ftz(hi * a));
                v[(2 * b + 1) as usize] = F::cast_from(ftz(lo * a));
            }
            out[w] = v;
        }
    }
}

/// 8-bit dequant, 8 values per unit: two `u32` of codes → one `Vector<F, 8>` store. The 256-entry
/// map is staged in shared memory (cube size must be 256). Needs `numel % 8 == 0`.
#[cube(launch_unchecked)]
pub fn dequant8_vec_kernel<F: Float, N: Size>(
    codes: &Array<u32>,
    absmax: &Array<f32>,
    map: &Array<f32>,
    out: &mut Array<Vector<F, N>>,
    num_vectors: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
) {
    let mut lut = SharedMemory::<f32>::new(256usize);
    lut[UNIT_POS as usize] = map[UNIT_POS as usize];
    sync_cube();
    let t = ABSOLUTE_POS;
    if t >= num_vectors {
        terminate!();
    }
    let w0 = codes[2 * t];
    let w1 = codes[2 * t + 1];
    let a = block_scale(absmax, t * 8, offset, blocksize, nested);
    let mut v = Vector::<F, N>::empty();
    #[unroll]
    for b in 0..4u32 {
        let c0 = (w0 >> (b * 8)) & 255u32;
        let c1 = (w1 >> (b * 8)) & 255u32;
        v[b as usize] = F::cast_from(ftz(lut[c0 as usize] * a));
        v[(b + 4) as usize] = F::cast_from(ftz(lut[c1 as usize] * a));
    }
    out[t] = v;
}

/// One value per unit, any length and alignment (odd shapes, tails).
#[cube(launch_unchecked)]
pub fn dequant_scalar_kernel<F: Float>(
    codes: &Array<u8>,
    absmax: &Array<f32>,
    map: &Array<f32>,
    out: &mut Array<F>,
    numel: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] four_bit: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= numel {
        terminate!();
    }
    let mut code = 0u32;
    if four_bit {
        let byte = u32::cast_from(codes[i / 2]);
        code = select(i % 2 == 0, byte >> 4, byte & 15u32);
    } else {
        code = u32::cast_from(codes[i]);
    }
    let a = block_scale(absmax, i, offset, blocksize, nested);
    out[i] = F::cast_from(ftz(map[code as usize] * a));
}

/// Per-block `max |ftz(x)|`, one unit per block (the reference's `block_absmax`).
#[cube(launch_unchecked)]
pub fn absmax_kernel<F: Float>(
    x: &Array<F>,
    absmax: &mut Array<f32>,
    numel: usize,
    num_blocks: usize,
    #[comptime] blocksize: usize,
) {
    let b = ABSOLUTE_POS;
    if b >= num_blocks {
        terminate!();
    }
    let start = b * blocksize;
    let end = select(start + blocksize < numel, start + blocksize, numel);
    let mut m = 0.0f32;
    for i in start..end {
        let v = f32::abs(ftz(f32::cast_from(x[i])));
        m = select(v > m, v, m);
    }
    absmax[b] = m;
}

/// Largest finite f32.
const MAX_FINITE: f32 = 3.402_823_5e38;

/// `inv[b]` = the scale block `b` is multiplied by. `bnb`: `rcp.approx.ftz.f32` as
/// `qtune_quant::rcp::rcp_approx_ftz` (a subnormal absmax counts as ±0 → ±inf, NaN stays NaN,
/// ±inf → ±0; a normal IEEE reciprocal gets the 2-bit delta of the absmax's mantissa from
/// `table` (16 per `u32` word: 00 → 0, 01 → +1, 10 → −1 ulp on the bit pattern); a result below
/// the normal range flushes to ±0). Else `ftz(1.0 / absmax)` (`Reciprocal::Ieee`).
#[cube(launch_unchecked)]
pub fn rcp_kernel(
    absmax: &Array<f32>,
    table: &Array<u32>,
    inv: &mut Array<f32>,
    count: usize,
    #[comptime] bnb: bool,
) {
    let b = ABSOLUTE_POS;
    if b >= count {
        terminate!();
    }
    let x = ftz(absmax[b]);
    let r = 1.0f32 / x;
    if bnb {
        let m = u32::reinterpret(x) & 0x007f_ffffu32;
        let code = (table[(m >> 4) as usize] >> ((m & 15u32) * 2u32)) & 3u32;
        let a = f32::abs(r);
        // NaN fails both comparisons; 0, inf and subnormal results keep `r` (then ftz).
        let not_small = a >= MIN_NORMAL;
        let finite = a <= MAX_FINITE;
        let normal = not_small && finite;
        let bits = u32::reinterpret(r);
        let stepped = select(
            code == 1u32,
            bits + 1u32,
            select(code == 2u32, bits - 1u32, bits),
        );
        inv[b] = ftz(select(normal, f32::reinterpret(stepped), r));
    } else {
        inv[b] = ftz(r);
    }
}

/// bnb `dQuantizeNF4` on a value already scaled by `1/absmax` (same thresholds as the reference).
#[cube]
fn encode_nf4(x: f32) -> u32 {
    let mut q = 0u32;
    if x > 0.039_790_15f32 {
        if x > 0.389_312_54f32 {
            if x > 0.642_786_9f32 {
                q = select(x > 0.861_478_45f32, 15u32, 14u32);
            } else {
                q = select(x > 0.501_663_45f32, 13u32, 12u32);
            }
        } else if x > 0.203_521_25f32 {
            q = select(x > 0.292_013_76f32, 11u32, 10u32);
        } else {
            q = select(x > 0.120_255_25f32, 9u32, 8u32);
        }
    } else if x > -0.339_679_42f32 {
        if x > -0.137_911_74f32 {
            q = select(x > -0.045_525_018f32, 7u32, 6u32);
        } else {
            q = select(x > -0.234_607_4f32, 5u32, 4u32);
        }
    } else if x > -0.610_632_9f32 {
        q = select(x > -0.459_995_27f32, 3u32, 2u32);
    } else {
        q = select(x > -0.848_096_4f32, 1u32, 0u32);
    }
    q
}

/// bnb `dQuantizeFP4`: sign from `x < 0`, magnitude tree over `|x|`.
#[cube]
fn encode_fp4(x: f32) -> u32 {
    let sign = select(x < 0.0f32, 8u32, 0u32);
    let a = f32::abs(x);
    let mut m = 0u32;
    if a > 0.291_666_66f32 {
        if a > 0.583_333f32 {
            m = select(a > 0.833_333_3f32, 3u32, 2u32);
        } else {
            m = select(a > 0.416_666_7f32, 5u32, 4u32);
        }
    } else if a > 0.085_937_5f32 {
        m = select(a > 0.208_333_33f32, 7u32, 6u32);
    } else {
        m = select(a > 0.002_604_17f32, 1u32, 0u32);
    }
    m + sign
}

/// 4-bit encode with the block scales `inv` of [`rcp_kernel`], one output byte (two values) per
/// unit; for odd `numel` the missing last value is encoded as 0.0 with the same block scale, like
/// the reference.
#[cube(launch_unchecked)]
pub fn quant4_kernel<F: Float>(
    x: &Array<F>,
    inv: &Array<f32>,
    codes: &mut Array<u8>,
    numel: usize,
    num_bytes: usize,
    #[comptime] blocksize: usize,
    #[comptime] nf4: bool,
) {
    let j = ABSOLUTE_POS;
    if j >= num_bytes {
        terminate!();
    }
    let i0 = 2 * j;
    let scale = inv[i0 / blocksize];
    let v0 = ftz(f32::cast_from(x[i0]));
    let mut v1 = 0.0f32;
    if i0 + 1 < numel {
        v1 = ftz(f32::cast_from(x[i0 + 1]));
    }
    let s0 = ftz(v0 * scale);
    let s1 = ftz(v1 * scale);
    let mut q0 = 0u32;
    let mut q1 = 0u32;
    if nf4 {
        q0 = encode_nf4(s0);
        q1 = encode_nf4(s1);
    } else {
        q0 = encode_fp4(s0);
        q1 = encode_fp4(s1);
    }
    codes[j] = u8::cast_from((q0 << 4) | q1);
}

/// 8-bit encode (bnb `dQuantize<0>`: 7-step binary search, then float-midpoint decision) with the
/// block scales `inv` of [`rcp_kernel`], one value per unit, with the 256-entry map in shared memory (cube size must be 256).
#[cube(launch_unchecked)]
pub fn quant8_kernel<F: Float>(
    x: &Array<F>,
    inv: &Array<f32>,
    map: &Array<f32>,
    codes: &mut Array<u8>,
    numel: usize,
    #[comptime] blocksize: usize,
) {
    let mut lut = SharedMemory::<f32>::new(256usize);
    lut[UNIT_POS as usize] = map[UNIT_POS as usize];
    sync_cube();
    let i = ABSOLUTE_POS;
    if i >= numel {
        terminate!();
    }
    let scale = inv[i / blocksize];
    let v = ftz(ftz(f32::cast_from(x[i])) * scale);
    let code = search_8bit(v, &lut, 0usize);
    codes[i] = u8::cast_from(code);
}

/// bitsandbytes' `dQuantize<0>` search of `v` in the ascending 256-entry map at `lut[off..off +
/// 256]`: seven halvings from pivot 127 keeping the bracket, then the nearer of the final
/// pivot's value and the bracketing code's by f32 midpoint. Shared by [`quant8_kernel`] and the
/// 8-bit optimizer's requantization.
#[cube]
pub fn search_8bit(v: f32, lut: &SharedMemory<f32>, #[comptime] off: usize) -> u32 {
    let mut pivot: u32 = 127u32;
    let mut upper_pivot: u32 = 255u32;
    let mut lower_pivot: u32 = 0u32;
    let mut lower: f32 = f32::new(-1.0);
    let mut upper: f32 = f32::new(1.0);
    let mut val: f32 = lut[off + 127usize];
    #[unroll]
    for s in 0..7u32 {
        let step = 64u32 >> s;
        if v > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = lut[off + pivot as usize];
    }
    if upper_pivot == 255u32 {
        upper = lut[off + 255usize];
    }
    if lower_pivot == 0u32 {
        lower = lut[off];
    }
    let mut code: u32 = pivot;
    if v > val {
        let midpoint = (upper + val) * 0.5f32;
        if v > midpoint {
            code = upper_pivot;
        }
    } else {
        let midpoint = (lower + val) * 0.5f32;
        if v < midpoint {
            code = lower_pivot;
        }
    }
    code
}
