//! The 8-bit "dynamic" code books of bitsandbytes' 8-bit optimizers and the code search its
//! blockwise optimizer kernel uses to requantize the moments.
//!
//! `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)` (bitsandbytes 0.50.2
//! `functional.py`): for exponent group `i` in 0..7, `2^i` (signed) or `2^(i+1)` (unsigned)
//! fractions, the midpoints of `torch.linspace(0.1, 1, k + 1)` in f32, scaled by `10^(i-6)` in
//! f32 (python scalar × f32 tensor); the signed map also has their negatives; then 0 and 1.0,
//! sorted. The signed map has 0.0 at index 127 and 1.0 at 255; the unsigned map has 0.0 at 0.
//!
//! torch's CPU `linspace` kernel evaluates `start + step * i` (first half) and
//! `end - step * (steps - i - 1)` (second half) with a fused multiply-add; with plain f32
//! multiply-then-add 30 of 256 signed entries are off by one ulp. With the fused form the
//! signed map equals `tests/fixtures/bnb/golden.safetensors:dynamic_map` bit for bit (a test
//! checks it); the unsigned map is built by the same code (no fixture holds it).

/// Number of codes in an 8-bit map.
pub const MAP_LEN: usize = 256;
/// Index of 0.0 in the signed map: the code of an all-zero first moment.
pub const SIGNED_ZERO_CODE: u8 = 127;
/// Index of 0.0 in the unsigned map: the code of an all-zero second moment.
pub const UNSIGNED_ZERO_CODE: u8 = 0;

/// torch.linspace(0.1, 1.0, steps, dtype=float32) as torch's CPU kernel computes it.
fn torch_linspace_f32(steps: usize) -> Vec<f32> {
    let (start, end) = (0.1f32, 1.0f32);
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// bitsandbytes `create_dynamic_map(signed)` with the default 7 exponent bits and 8 total bits.
pub fn create_dynamic_map(signed: bool) -> [f32; MAP_LEN] {
    let mut data: Vec<f32> = Vec::with_capacity(MAP_LEN);
    for i in 0..7u32 {
        let fraction_items = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let bounds = torch_linspace_f32(fraction_items);
        // Python evaluates 10 ** (i - 6) in f64; torch casts the scalar to f32 for the product.
        let scale = 10f64.powi(i as i32 - 6) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), MAP_LEN);
    data.sort_by(f32::total_cmp);
    let mut out = [0f32; MAP_LEN];
    out.copy_from_slice(&data);
    out
}

/// bitsandbytes' `quantize_2D<SIGNED>` (csrc/kernels.cu), the search used by
/// `kOptimizerStatic8bit2StateBlockwise`: a 7-step binary search from pivot 127, then the nearer
/// of the two bracketing codes by midpoint. Unlike the weight quantizer (`dQuantize`) the
/// bracket starts at (-1 or 0, 1.0) and is never reset to code[0]/code[255]. `x` is the value
/// divided by its block absmax, so it lies in [-1, 1]. Host reference for the tensor version in
/// `blockwise.rs` (tests compare the two).
pub fn quantize_2d(map: &[f32; MAP_LEN], signed: bool, x: f32) -> u8 {
    qtune_quant::maps::search_8bit(map, x, if signed { -1.0 } else { 0.0 }, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_with_exact_zero_and_one() {
        for signed in [true, false] {
            let m = create_dynamic_map(signed);
            assert!(
                m.windows(2).all(|w| w[0] < w[1]),
                "signed={signed}: strictly increasing"
            );
            assert_eq!(m[255], 1.0);
        }
        assert_eq!(create_dynamic_map(true)[SIGNED_ZERO_CODE as usize], 0.0);
        assert_eq!(create_dynamic_map(false)[UNSIGNED_ZERO_CODE as usize], 0.0);
        assert_eq!(create_dynamic_map(true)[0], -create_dynamic_map(true)[254]);
    }

    #[test]
    fn quantize_2d_picks_a_nearest_code() {
        for signed in [true, false] {
            let m = create_dynamic_map(signed);
            let lo = if signed { -1.0f32 } else { 0.0 };
            for k in 0..=4000 {
                let x = lo + (1.0 - lo) * k as f32 / 4000.0;
                let c = quantize_2d(&m, signed, x) as usize;
                let best = m
                    .iter()
                    .map(|v| (v - x).abs())
                    .fold(f32::INFINITY, f32::min);
                // Midpoints are rounded in f32, so a tie may go either way by an ulp.
                assert!(
                    (m[c] - x).abs() <= best + 1e-7,
                    "signed={signed} x={x} code={c}"
                );
            }
        }
    }
}
