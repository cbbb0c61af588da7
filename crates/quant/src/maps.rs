//! The code books (maps) and the encoders that pick a code for a normalized value `x/absmax`.
//!
//! Every encoder follows bitsandbytes 0.50.2 `csrc/kernels.cu` decision for decision, because
//! "nearest code" is not enough to be bit-identical: ties and the float midpoints decide.
//! - 8-bit: `dQuantize<0>`: a 7-step binary search over the sorted 256-entry map, then a
//!   comparison against the float midpoint `(neighbour + val) * 0.5` (not an exact nearest).
//! - NF4: `dQuantizeNF4`: a fixed decision tree whose thresholds are the midpoints of the
//!   NF4 code book, written as f32 literals.
//! - FP4: `dQuantizeFP4`: sign bit from `x < 0`, then a tree over `|x|`.
//!
//! The scale `1/absmax` is bnb's fast-math reciprocal ([`inv_absmax`], [`crate::rcp`]).
//!
//! A NaN input (an all-zero block gives `0 * (1/0)`) falls through every comparison exactly as
//! on the GPU: 8-bit code 0, NF4 code 0, FP4 code 0; all of them decode to ±0 with absmax 0.

use crate::rcp::Reciprocal;

/// bitsandbytes `create_dynamic_map(signed=True)`: the signed dynamic-tree 8-bit code book,
/// sorted ascending. Entry 0 is -0.99296874 (not -1), 127 is 0 and 255 is 1. Also the map of the
/// nested (double-quant) absmax, bnb's `nested_quant_map`. Copied bit for bit from
/// tests/fixtures/bnb/golden.safetensors `dynamic_map` (a test re-checks every bit).
#[rustfmt::skip]
pub const DYNAMIC_MAP: [f32; 256] = [
    -0.99296874, -0.9789063, -0.96484375, -0.9507812, -0.93671876, -0.92265624, -0.9085938, -0.89453125,
    -0.8804687, -0.86640626, -0.85234374, -0.8382813, -0.82421875, -0.8101562, -0.79609376, -0.78203124,
    -0.7679688, -0.75390625, -0.7398437, -0.72578126, -0.7117188, -0.6976563, -0.68359375, -0.6695312,
    -0.65546876, -0.6414063, -0.6273438, -0.61328125, -0.5992187, -0.58515626, -0.5710938, -0.5570313,
    -0.54296875, -0.5289062, -0.5148437, -0.50078124, -0.4867187, -0.47265625, -0.45859373, -0.44453126,
    -0.43046874, -0.41640624, -0.40234375, -0.38828123, -0.37421876, -0.36015624, -0.34609374, -0.33203125,
    -0.31796873, -0.30390626, -0.28984374, -0.27578127, -0.26171875, -0.24765624, -0.23359375, -0.21953125,
    -0.20546874, -0.19140625, -0.17734376, -0.16328125, -0.14921875, -0.13515624, -0.12109375, -0.107031256,
    -0.09859375, -0.09578126, -0.092968754, -0.09015625, -0.08734375, -0.08453125, -0.08171876, -0.07890625,
    -0.07609375, -0.07328125, -0.070468746, -0.067656256, -0.06484375, -0.06203125, -0.059218753, -0.05640625,
    -0.05359375, -0.05078125, -0.04796875, -0.04515625, -0.042343747, -0.03953125, -0.036718752, -0.03390625,
    -0.03109375, -0.028281251, -0.02546875, -0.02265625, -0.019843752, -0.01703125, -0.01421875, -0.01140625,
    -0.00971875, -0.009156249, -0.00859375, -0.00803125, -0.00746875, -0.00690625, -0.00634375, -0.00578125,
    -0.0052187503, -0.0046562497, -0.00409375, -0.0035312497, -0.00296875, -0.00240625, -0.00184375, -0.0012812499,
    -0.0009437501, -0.00083125, -0.00071875006, -0.0006062501, -0.00049375003, -0.00038125002, -0.00026875004, -0.00015625001,
    -8.875e-05, -6.625e-05, -4.375e-05, -2.1249998e-05, -7.75e-06, -3.2500002e-06, -5.5000004e-07, 0.0,
    5.5000004e-07, 3.2500002e-06, 7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05, 0.00015625001,
    0.00026875004, 0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501, 0.0012812499,
    0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497, 0.0052187503, 0.00578125,
    0.00634375, 0.00690625, 0.00746875, 0.00803125, 0.00859375, 0.009156249, 0.00971875, 0.01140625,
    0.01421875, 0.01703125, 0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375, 0.03390625,
    0.036718752, 0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625,
    0.059218753, 0.06203125, 0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375, 0.07890625,
    0.08171876, 0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.09578126, 0.09859375, 0.107031256,
    0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625, 0.20546874, 0.21953125,
    0.23359375, 0.24765624, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873, 0.33203125,
    0.34609374, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126,
    0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313,
    0.5710938, 0.58515626, 0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312,
    0.68359375, 0.6976563, 0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124,
    0.79609376, 0.8101562, 0.82421875, 0.8382813, 0.85234374, 0.86640626, 0.8804687, 0.89453125,
    0.9085938, 0.92265624, 0.93671876, 0.9507812, 0.96484375, 0.9789063, 0.99296874, 1.0,
];

/// NF4 code book as bitsandbytes' `nf4_dequantization_lut` (= `get_4bit_type("nf4")`):
/// 16 sorted N(0,1) quantiles scaled to [-1, 1]; index 7 is an exact zero.
pub const NF4_MAP: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 (1 sign, 2 exponent, 1 mantissa bit) code book in bit-pattern order, scaled so that the
/// largest magnitude is 1, exactly as the CUDA kernel decodes it: `lut[c & 7] * (1 - 2*sign)`.
/// Index 8 is therefore **-0.0**; bnb's Python `get_4bit_type("fp4")` (and the `quant_map`
/// tensor it saves) has +0.0 there, which the kernel never produces.
pub const FP4_MAP: [f32; 16] = [
    0.0,
    0.005_208_333_5,
    0.666_666_7,
    1.0,
    0.333_333_34,
    0.5,
    0.166_666_67,
    0.25,
    -0.0,
    -0.005_208_333_5,
    -0.666_666_7,
    -1.0,
    -0.333_333_34,
    -0.5,
    -0.166_666_67,
    -0.25,
];

// Layout facts the encoders and the GPU kernels rely on.
const _: () = assert!(DYNAMIC_MAP[127] == 0.0 && DYNAMIC_MAP[255] == 1.0);
const _: () = assert!(NF4_MAP[7] == 0.0 && NF4_MAP[0] == -1.0 && NF4_MAP[15] == 1.0);
const _: () = assert!(FP4_MAP[0] == 0.0 && FP4_MAP[3] == 1.0 && FP4_MAP[11] == -1.0);

/// Largest gap between neighbouring entries of a sorted map. Half of it times the block absmax
/// bounds the round-trip error of a value (see the proptests); computed, not typed in.
pub const fn max_gap(sorted: &[f32]) -> f32 {
    let mut gap = 0.0f32;
    let mut i = 1;
    while i < sorted.len() {
        let d = sorted[i] - sorted[i - 1];
        if d > gap {
            gap = d;
        }
        i += 1;
    }
    gap
}

/// Largest gap of [`DYNAMIC_MAP`]: ≈0.0140625 (= 0.9/64, the spacing of its top decade).
pub const DYNAMIC_MAX_GAP: f32 = max_gap(&DYNAMIC_MAP);
/// Largest gap of [`NF4_MAP`]: 0.3038072 (between -1 and -0.6961928).
pub const NF4_MAX_GAP: f32 = max_gap(&NF4_MAP);
/// Largest gap of the FP4 magnitudes {0, 0.0052, 1/6, 1/4, 1/3, 1/2, 2/3, 1}: 1/3 (from 2/3 to 1).
pub const FP4_MAX_GAP: f32 = max_gap(&[
    FP4_MAP[0], FP4_MAP[1], FP4_MAP[6], FP4_MAP[7], FP4_MAP[4], FP4_MAP[5], FP4_MAP[2], FP4_MAP[3],
]);

/// `dQuantize<0>` over a sorted 256-entry map (bnb's deterministic 8-bit encoder).
#[inline]
pub fn encode_dynamic(map: &[f32; 256], x: f32) -> u8 {
    search_8bit(map, x, -1.0, true)
}

/// The code search of bitsandbytes' 8-bit encoders over a sorted 256-entry map: a 7-step binary
/// search from pivot 127 with the bracket (`lower`, 1.0), then the nearer of the two bracketing
/// codes by midpoint. The search never visits index 255 or 0 as a neighbour value:
/// `fetch_ends` reads them for a bracket end still there, as the weight quantizer `dQuantize`
/// does; the optimizer's `quantize_2D` keeps the starting bracket (qtune-optim's `quantize_2d`).
#[inline]
pub fn search_8bit(map: &[f32; 256], x: f32, lower: f32, fetch_ends: bool) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = lower;
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut step = 64usize;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = map[pivot];
        step >>= 1;
    }
    if fetch_ends && upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if fetch_ends && lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    if x > val {
        let midpoint = (upper + val) * 0.5;
        if x > midpoint {
            upper_pivot as u8
        } else {
            pivot as u8
        }
    } else {
        let midpoint = (lower + val) * 0.5;
        if x < midpoint {
            lower_pivot as u8
        } else {
            pivot as u8
        }
    }
}

/// `dQuantizeNF4`: thresholds are the f32 midpoints between neighbouring NF4 codes.
#[inline]
pub fn encode_nf4(x: f32) -> u8 {
    if x > 0.039_790_15 {
        if x > 0.389_312_54 {
            if x > 0.642_786_9 {
                if x > 0.861_478_45 {
                    0b1111
                } else {
                    0b1110
                }
            } else if x > 0.501_663_45 {
                0b1101
            } else {
                0b1100
            }
        } else if x > 0.203_521_25 {
            if x > 0.292_013_76 {
                0b1011
            } else {
                0b1010
            }
        } else if x > 0.120_255_25 {
            0b1001
        } else {
            0b1000
        }
    } else if x > -0.339_679_42 {
        if x > -0.137_911_74 {
            if x > -0.045_525_018 {
                0b0111
            } else {
                0b0110
            }
        } else if x > -0.234_607_4 {
            0b0101
        } else {
            0b0100
        }
    } else if x > -0.610_632_9 {
        if x > -0.459_995_27 {
            0b0011
        } else {
            0b0010
        }
    } else if x > -0.848_096_4 {
        0b0001
    } else {
        0b0000
    }
}

/// `dQuantizeFP4`: the sign comes from `x < 0` (so -0.0 and NaN get sign 0), the magnitude
/// from a tree over `|x|` whose thresholds are the midpoints of [`FP4_MAP`].
#[inline]
pub fn encode_fp4(x: f32) -> u8 {
    let sign = if x < 0.0 { 0b1000 } else { 0b0000 };
    let a = x.abs();
    let magnitude = if a > 0.291_666_66 {
        if a > 0.583_333 {
            if a > 0.833_333_3 {
                0b0011
            } else {
                0b0010
            }
        } else if a > 0.416_666_7 {
            0b0101
        } else {
            0b0100
        }
    } else if a > 0.085_937_5 {
        if a > 0.208_333_33 {
            0b0111
        } else {
            0b0110
        }
    } else if a > 0.002_604_17 {
        0b0001
    } else {
        0b0000
    };
    magnitude + sign
}

/// bnb builds its CUDA code with `--use_fast_math`, which flushes subnormal f32 operands and
/// results of arithmetic to (signed) zero. Applied wherever the kernel does float arithmetic.
#[inline]
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// The scale the kernel multiplies by: `1.0f / absmax` (then `x * scale`, not `x / absmax`),
/// as bnb's CUDA build computes it: the GPU's approximate reciprocal, reproduced bit for bit
/// from a table measured on an H100 (see [`crate::rcp`]). An all-zero block gives +inf, and
/// `0 * inf` = NaN, which the encoders map like bnb does.
#[inline]
pub fn inv_absmax(absmax: f32) -> f32 {
    Reciprocal::BnbCuda.inv_absmax(absmax)
}

/// The correctly rounded `1.0 / absmax` (then FTZ): what an IEEE division gives, e.g. the GPU
/// quantizer of qtune-kernels (no fast-math). Differs from [`inv_absmax`] by one ulp for about
/// 13% of mantissas, which changes a code only at exact decision midpoints.
#[inline]
pub fn inv_absmax_ieee(absmax: f32) -> f32 {
    Reciprocal::Ieee.inv_absmax(absmax)
}

/// Block absmax as the kernel's `fmaxf(.., fabsf(x))` reduction computes it (under FTZ).
#[inline]
pub fn block_absmax(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, &v| m.max(ftz(v).abs()))
}
