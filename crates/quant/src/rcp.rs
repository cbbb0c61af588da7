//! The reciprocal `1.0f / absmax` that bnb's quantize kernels multiply by.
//!
//! bitsandbytes builds its CUDA code with `--use_fast_math`, so that division compiles to the
//! GPU's approximate `rcp.approx.ftz.f32` (MUFU.RCP), which NVIDIA documents only as "max 1 ulp"
//! off. Its exact results are not public, so we measured them on an H100: for every one of the
//! 2^23 f32 mantissas, `bits(rcp_approx(x)) = bits((1/(x as f64)) as f32) + delta[mantissa]`
//! with delta ∈ {-1, 0, +1} (733,799 are +1, 374,723 are -1), and the delta depends on the
//! mantissa alone (checked at exponents -100, -20, -1, 0, 1, 7, 12, 60: no mismatch).
//! The program and its summary are tests/fixtures/gpu_rcp/{rcp.cu, rcp.json} in the qtune
//! repository; the table itself ships with this crate as `data/rcp_f32.bin.gz` (gzip of 2^23 i8
//! deltas, index = mantissa bits) and is decoded once, on first use, into 2 bits per mantissa
//! (2 MiB).
//!
//! At an exact decision midpoint `x * scale` can tip the other way with a one-ulp different
//! scale; with the table, every one of the 933,504 golden codes of tests/fixtures/bnb matches.
//! qtune-kernels' GPU quantizer computes the same values from [`table_words`] (its kernel's
//! formula is checked against [`rcp_approx_ftz`] here, on the CPU, and on the GPU by
//! `cargo xtask bench gpu-check`). [`Reciprocal::Ieee`] keeps the correctly rounded reciprocal.

use std::io::Read;
use std::sync::OnceLock;

use crate::maps::ftz;

/// The measured table: gzip of 2^23 i8 deltas (see the module docs).
static TABLE_GZ: &[u8] = include_bytes!("../data/rcp_f32.bin.gz");
const MANTISSAS: usize = 1 << 23;
const MANTISSA_MASK: u32 = (1 << 23) - 1;

/// Which reciprocal a quantizer multiplies by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reciprocal {
    /// bnb's CUDA build: `rcp.approx.ftz.f32` as measured on an H100 (bit-exact with bnb).
    #[default]
    BnbCuda,
    /// The correctly rounded `1.0 / absmax` (then FTZ), as an IEEE division computes it.
    Ieee,
}

impl Reciprocal {
    /// The scale for a block with this absmax. An all-zero block gives +inf in both modes
    /// (bnb does not special-case it: `0 * inf` = NaN, which its encoders map to code 0/7).
    #[inline]
    pub fn inv_absmax(self, absmax: f32) -> f32 {
        match self {
            Reciprocal::BnbCuda => rcp_approx_ftz(absmax),
            Reciprocal::Ieee => ftz(1.0 / absmax),
        }
    }
}

/// `rcp.approx.ftz.f32` on an H100. A subnormal input counts as ±0 and gives ±inf, ±inf gives
/// ±0, NaN stays NaN, and a result below the normal range flushes to ±0 (for |x| > 2^126).
/// The delta is measured for normal results at the exponents listed in the module docs; for the
/// normal range we rely on its being independent of the exponent, as every measured one was.
pub fn rcp_approx_ftz(x: f32) -> f32 {
    let x = ftz(x);
    if x == 0.0 {
        return f32::INFINITY.copysign(x);
    }
    if x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return 0.0f32.copysign(x);
    }
    let exact = (1.0 / f64::from(x)) as f32;
    if !exact.is_normal() {
        return 0.0f32.copysign(x);
    }
    let delta = i32::from(delta(x.to_bits() & MANTISSA_MASK));
    // Integer steps on the bit pattern, as measured: may cross a binade boundary, never the sign.
    ftz(f32::from_bits(exact.to_bits().wrapping_add_signed(delta)))
}

/// The measured delta in ulps (-1, 0 or +1) for a 23-bit f32 mantissa.
#[inline]
pub fn delta(mantissa: u32) -> i8 {
    let m = (mantissa & MANTISSA_MASK) as usize;
    match (table()[m / 4] >> (2 * (m % 4))) & 0b11 {
        0b01 => 1,
        0b10 => -1,
        _ => 0,
    }
}

/// The packed table as little-endian `u32` words, for a GPU kernel to index: mantissa `m` is
/// `(words[m / 16] >> (2 * (m % 16))) & 3`, with 00 → 0, 01 → +1, 10 → -1 ulp (2^19 words,
/// 2 MiB). A kernel computes [`rcp_approx_ftz`] from it as: flush a subnormal `x` to ±0;
/// `r = 1.0f32 / x` correctly rounded; if `r` is normal (not 0, inf, NaN or subnormal),
/// `r = from_bits(bits(r) + delta[mantissa(x)])`; then flush a subnormal `r` to ±0.
pub fn table_words() -> &'static [u32] {
    static WORDS: OnceLock<Vec<u32>> = OnceLock::new();
    WORDS.get_or_init(|| {
        table()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// 2 bits per mantissa, 4 per byte, low bits first: 00 → 0, 01 → +1, 10 → -1.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The table is a constant compiled into the crate (and checked by a test), not input:
        // failing to decode it is a broken build, hence the panic.
        decode(TABLE_GZ).unwrap_or_else(|e| panic!("qtune-quant: data/rcp_f32.bin.gz: {e}"))
    })
}

fn decode(gz: &[u8]) -> Result<Vec<u8>, String> {
    let mut raw = Vec::with_capacity(MANTISSAS);
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    if raw.len() != MANTISSAS {
        return Err(format!("{} deltas, expected {MANTISSAS}", raw.len()));
    }
    let mut packed = vec![0u8; MANTISSAS / 4];
    for (m, &d) in raw.iter().enumerate() {
        let code = match d as i8 {
            0 => 0b00,
            1 => 0b01,
            -1 => 0b10,
            other => return Err(format!("delta {other} at mantissa {m:#x}, expected -1..=1")),
        };
        packed[m / 4] |= code << (2 * (m % 4));
    }
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_inputs_follow_rcp_approx_ftz() {
        assert_eq!(rcp_approx_ftz(0.0), f32::INFINITY);
        assert_eq!(rcp_approx_ftz(-0.0), f32::NEG_INFINITY);
        assert_eq!(rcp_approx_ftz(f32::from_bits(1)), f32::INFINITY);
        assert_eq!(rcp_approx_ftz(f32::INFINITY).to_bits(), 0);
        assert!(rcp_approx_ftz(f32::NAN).is_nan());
        // 1/x below 2^-126 flushes; exactly 2^-126 does not.
        assert_eq!(rcp_approx_ftz(3.0 * 2f32.powi(125)).to_bits(), 0);
        assert_eq!(rcp_approx_ftz(2f32.powi(126)), 2f32.powi(-126));
        assert_eq!(rcp_approx_ftz(f32::MAX).to_bits(), 0);
        assert_eq!(rcp_approx_ftz(f32::MIN_POSITIVE), 2f32.powi(126));
        // Powers of two are exact on the GPU too (delta of mantissa 0 is 0).
        assert_eq!(delta(0), 0);
        assert_eq!(rcp_approx_ftz(4.0), 0.25);
        assert_eq!(rcp_approx_ftz(-0.5), -2.0);
    }

    #[test]
    fn the_delta_depends_on_the_mantissa_only() {
        for bits in [
            0x42c1_0000u32,
            0x3f80_0001,
            0x3fff_ffff,
            0x0123_4567,
            0x7e55_5555,
        ] {
            let x = f32::from_bits(bits);
            let d = i64::from(delta(bits));
            let exact = (1.0 / f64::from(x)) as f32;
            assert_eq!(
                i64::from(rcp_approx_ftz(x).to_bits()) - i64::from(exact.to_bits()),
                d
            );
            assert_eq!(rcp_approx_ftz(-x), -rcp_approx_ftz(x));
        }
    }

    /// The GPU kernel's arithmetic (qtune-kernels `rcp_kernel`), step for step in f32: IEEE
    /// `1.0f32 / x` (Rust's division is correctly rounded, as NVRTC's default `-prec-div=true`),
    /// then the delta from [`table_words`] on the bit pattern when the result is normal.
    fn kernel_formula(words: &[u32], x: f32) -> f32 {
        let flush = |v: f32| {
            if v.abs() < f32::MIN_POSITIVE {
                v * 0.0
            } else {
                v
            }
        };
        let x = flush(x);
        let r = 1.0f32 / x;
        let m = (x.to_bits() & MANTISSA_MASK) as usize;
        let code = (words[m / 16] >> (2 * (m % 16))) & 3;
        let a = r.abs();
        let r = if (f32::MIN_POSITIVE..=f32::MAX).contains(&a) {
            let bits = r.to_bits();
            f32::from_bits(match code {
                1 => bits.wrapping_add(1),
                2 => bits.wrapping_sub(1),
                _ => bits,
            })
        } else {
            r
        };
        flush(r)
    }

    #[test]
    fn the_packed_words_give_rcp_approx_ftz() {
        let words = table_words();
        assert_eq!(words.len(), MANTISSAS / 16);
        let same = |x: f32| {
            let (want, got) = (rcp_approx_ftz(x), kernel_formula(words, x));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "x = {x:e} ({:#010x}): rcp_approx_ftz {want:e}, kernel formula {got:e}",
                x.to_bits()
            );
        };
        // Every mantissa at a mid-range exponent, both signs; a stride of mantissas at every
        // exponent (subnormal inputs, results that flush, the largest finite values).
        for m in 0..MANTISSAS as u32 {
            same(f32::from_bits(0x3f80_0000 | m));
            same(f32::from_bits(0xc580_0000 | m));
        }
        for e in 0..=255u32 {
            for m in (0..MANTISSAS as u32)
                .step_by(4099)
                .chain([0, 1, MANTISSA_MASK])
            {
                same(f32::from_bits((e << 23) | m));
                same(f32::from_bits(0x8000_0000 | (e << 23) | m));
            }
        }
        for x in [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ] {
            same(x);
        }
    }

    #[test]
    fn ieee_mode_is_the_correctly_rounded_reciprocal() {
        assert_eq!(Reciprocal::Ieee.inv_absmax(96.5).to_bits(), 0x3c29_c84a);
        assert_eq!(Reciprocal::BnbCuda.inv_absmax(96.5).to_bits(), 0x3c29_c84b);
        assert_eq!(Reciprocal::Ieee.inv_absmax(0.0), f32::INFINITY);
        assert_eq!(Reciprocal::default(), Reciprocal::BnbCuda);
    }
}
