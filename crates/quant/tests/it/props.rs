//! Property tests for every quantizer. Round-trip bound per value: the encoders pick a code
//! within half the largest gap of the map around `x/absmax` (bnb's midpoint rule), so
//! `|x - dequant(x)| <= 0.5 * MAX_GAP * absmax(block) + SLACK * absmax(block)`, with
//! MAX_GAP = 0.0140625 (8-bit dynamic), 0.3038072 (NF4), 1/3 (FP4), and SLACK = 1e-6 for the
//! f32 roundings of `x * (1/absmax)` and `code * absmax` (a few ulps of absmax).

use half::{bf16, f16};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use qtune_quant::fourbit::{self, FourBit};
use qtune_quant::{blockwise8, Absmax, FloatDType, QuantFormat, QuantSpec, QuantizedTensor};
use qtune_quant::{DYNAMIC_MAX_GAP, FP4_MAX_GAP, NF4_MAX_GAP};

const SLACK: f32 = 1e-6;

fn check_bound(
    xs: &[f32],
    ys: &[f32],
    absmax: &[f32],
    b: usize,
    gap: f32,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(xs.len(), ys.len());
    for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
        let a = absmax[i / b];
        prop_assert!(
            (x - y).abs() <= (0.5 * gap + SLACK) * a,
            "i={} x={} y={} absmax={}",
            i,
            x,
            y,
            a
        );
    }
    Ok(())
}

#[test]
fn max_gaps_are_the_stated_numbers() {
    // The top decade of the dynamic map is spaced 0.9/64 = 0.0140625 (up to f32 rounding).
    assert!(
        (DYNAMIC_MAX_GAP - 0.014_062_5).abs() < 1e-7,
        "{DYNAMIC_MAX_GAP}"
    );
    assert_eq!(NF4_MAX_GAP, 1.0 - 0.696_192_8);
    assert_eq!(FP4_MAX_GAP, 1.0 - 0.666_666_7);
}

#[test]
fn nibble_pack_unpack_is_a_bijection() {
    for byte in 0..=255u8 {
        let (even, odd) = fourbit::unpack(byte);
        assert_eq!(fourbit::pack(even, odd), byte);
    }
    for even in 0..16u8 {
        for odd in 0..16u8 {
            assert_eq!(fourbit::unpack(fourbit::pack(even, odd)), (even, odd));
        }
    }
    // bnb's order: value 2j in the high nibble.
    assert_eq!(fourbit::pack(0xA, 0x3), 0xA3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn blockwise8_roundtrip(xs in vec(-1e4f32..1e4, 1..3000), b in select(blockwise8::BLOCKSIZES.to_vec())) {
        let (codes, absmax) = blockwise8::quantize(&xs, b).unwrap();
        prop_assert_eq!(codes.len(), xs.len());
        prop_assert_eq!(absmax.len(), xs.len().div_ceil(b));
        let ys = blockwise8::dequantize(&codes, &absmax, b).unwrap();
        check_bound(&xs, &ys, &absmax, b, DYNAMIC_MAX_GAP)?;
        // Deterministic: same input, same bits.
        let again = blockwise8::dequantize(&codes, &absmax, b).unwrap();
        prop_assert_eq!(ys.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), again.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        prop_assert_eq!(blockwise8::quantize(&xs, b).unwrap(), (codes, absmax));
    }

    /// With the default map, the map-generic entry points equal the bnb-exact ones.
    #[test]
    fn with_map_equals_default(xs in vec(-1e4f32..1e4, 1..3000), b in select(blockwise8::BLOCKSIZES.to_vec())) {
        let (codes, absmax) = blockwise8::quantize(&xs, b).unwrap();
        prop_assert_eq!(blockwise8::quantize_with_map(&xs, b, &qtune_quant::DYNAMIC_MAP).unwrap(), (codes.clone(), absmax.clone()));
        let a = blockwise8::dequantize(&codes, &absmax, b).unwrap();
        let m = blockwise8::dequantize_with_map(&codes, &absmax, b, &qtune_quant::DYNAMIC_MAP).unwrap();
        prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), m.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn fourbit_roundtrip(xs in vec(-1e4f32..1e4, 1..3000), b in select(fourbit::BLOCKSIZES.to_vec()), nf4 in any::<bool>()) {
        let (kind, gap) = if nf4 { (FourBit::Nf4, NF4_MAX_GAP) } else { (FourBit::Fp4, FP4_MAX_GAP) };
        let (packed, absmax) = fourbit::quantize(&xs, b, kind).unwrap();
        prop_assert_eq!(packed.len(), xs.len().div_ceil(2));
        let ys = fourbit::dequantize(&packed, &absmax, xs.len(), b, kind).unwrap();
        check_bound(&xs, &ys, &absmax, b, gap)?;
        let again = fourbit::dequantize(&packed, &absmax, xs.len(), b, kind).unwrap();
        prop_assert_eq!(ys.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), again.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        // Every value decodes from its own nibble.
        for (i, y) in ys.iter().enumerate() {
            let code = fourbit::nibble(&packed, i);
            prop_assert_eq!(y.to_bits(), (kind.map()[code as usize] * absmax[i / b]).to_bits());
        }
    }

    /// Double quant: each decoded absmax is within half a dynamic-map gap of the nested block's
    /// scale of the true one; values then stay within the 4-bit bound of the decoded absmax.
    #[test]
    fn double_quant_roundtrip(xs in vec(-1e3f32..1e3, 1..20000), fmt in select(vec![QuantFormat::Nf4, QuantFormat::Fp4, QuantFormat::Blockwise8])) {
        let b = if fmt == QuantFormat::Blockwise8 { 64 } else { 32 };
        let spec = QuantSpec { format: fmt, blocksize: b, double_quant: true };
        let q = QuantizedTensor::quantize("w", &xs, &[xs.len()], spec, FloatDType::F32).unwrap();
        let plain = QuantizedTensor::quantize("w", &xs, &[xs.len()], QuantSpec { double_quant: false, ..spec }, FloatDType::F32).unwrap();
        let Absmax::Nested(nested) = &q.absmax else { panic!("nested expected") };
        let decoded = q.absmax_f32();
        for (i, (a, d)) in plain.absmax_f32().iter().zip(&decoded).enumerate() {
            let scale = nested.absmax[i / nested.blocksize];
            prop_assert!((a - d).abs() <= (0.5 * DYNAMIC_MAX_GAP + SLACK) * scale + SLACK * nested.offset.abs(), "block {} {} vs {}", i, a, d);
        }
        prop_assert_eq!(q.codes, plain.codes);
    }

    /// Quantizing bf16/f16 bytes block by block equals quantizing the widened f32 values.
    #[test]
    fn byte_stream_equals_f32_path(xs in vec(-1e4f32..1e4, 1..5000), half_is_bf16 in any::<bool>(), fmt in select(vec![QuantFormat::Nf4, QuantFormat::Fp4, QuantFormat::Blockwise8])) {
        let (bytes, widened, dtype): (Vec<u8>, Vec<f32>, _) = if half_is_bf16 {
            let h: Vec<bf16> = xs.iter().map(|&v| bf16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect(), FloatDType::BF16)
        } else {
            let h: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect(), FloatDType::F16)
        };
        let spec = QuantSpec { format: fmt, blocksize: fmt.default_blocksize(), double_quant: true };
        let from_bytes = QuantizedTensor::quantize_bytes("w", &bytes, dtype, &[xs.len()], spec).unwrap();
        let from_f32 = QuantizedTensor::quantize("w", &widened, &[xs.len()], spec, dtype).unwrap();
        // Unrounded f32 input with a 16-bit dtype is rounded first, as torch's `.to()` would.
        let from_raw = QuantizedTensor::quantize("w", &xs, &[xs.len()], spec, dtype).unwrap();
        prop_assert_eq!(&from_bytes, &from_f32);
        prop_assert_eq!(&from_bytes, &from_raw);
        prop_assert_eq!(from_bytes.dequantize_to_bits().dtype(), dtype);
    }
}
