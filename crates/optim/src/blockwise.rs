//! Blockwise 8-bit (de)quantization of optimizer moments as tensor ops, so the state and the
//! update stay on the parameter's device. Layout as bitsandbytes' blockwise optimizers:
//! `codes[i]` (u8) indexes a 256-entry map, value = `map[codes[i]] * absmax[i / 256]`.

use crate::dynamic_map::{self, MAP_LEN, SIGNED_ZERO_CODE, UNSIGNED_ZERO_CODE};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

/// Block size of bitsandbytes' blockwise optimizers (fixed at 256 in its kernels).
pub const BLOCK: usize = 256;

/// The two code books on one device: signed for the first moment, unsigned for the second.
#[derive(Debug, Clone)]
pub(crate) struct Maps<B: Backend> {
    pub signed: Tensor<B, 1>,
    pub unsigned: Tensor<B, 1>,
    pub signed_zero: u8,
    pub unsigned_zero: u8,
}

impl<B: Backend> Maps<B> {
    pub fn new(device: &B::Device) -> Self {
        let upload = |m: [f32; MAP_LEN]| {
            Tensor::<B, 1>::from_data(TensorData::new(m.to_vec(), [MAP_LEN]), (device, DType::F32))
        };
        Self {
            signed: upload(dynamic_map::create_dynamic_map(true)),
            unsigned: upload(dynamic_map::create_dynamic_map(false)),
            signed_zero: SIGNED_ZERO_CODE,
            unsigned_zero: UNSIGNED_ZERO_CODE,
        }
    }
}

/// `map[codes] * absmax[block]` for a padded code tensor of `n_blocks * 256` entries.
pub(crate) fn dequantize<B: Backend>(
    map: &Tensor<B, 1>,
    codes: Tensor<B, 1, Int>,
    absmax: Tensor<B, 1>,
    n_blocks: usize,
) -> Tensor<B, 1> {
    // Index with the backend's own int dtype: U8 indices are not accepted everywhere.
    let index_dtype = Tensor::<B, 1, Int>::zeros([1], &codes.device()).dtype();
    let values = map.clone().select(0, codes.cast(index_dtype));
    (values.reshape([n_blocks, BLOCK]) * absmax.reshape([n_blocks, 1])).reshape([n_blocks * BLOCK])
}

/// bitsandbytes' `quantize_2D<signed>` over a tensor of normalized values (in [-1, 1]); returns
/// codes in the backend's index dtype. Same search as [`dynamic_map::quantize_2d`]: seven
/// halvings from pivot 127, then the nearer of the final pivot's value and the bracketing
/// code's by f32 midpoint.
///
/// Only the pivot is carried through the halvings (5 ops a halving, where carrying the bracket
/// took 11: the optimizer step is launch-bound). The bracket bnb carries is the final pivot
/// `p`'s neighbours: after the last halving that went the other way (step `s`), every later one
/// moved `p` back by `s/2 + … + 1 = s − 1`, so that pivot is `p ± 1`. If no halving went down,
/// bnb's upper bracket is its initial code 255, and `p` = 254. If none went up, its lower
/// bracket is its initial code 0 (value `lo`), and `p` = 0: the clamped neighbour is code 0
/// too, so either choice gives code 0.
pub(crate) fn quantize_2d<B: Backend>(map: &Tensor<B, 1>, x: Tensor<B, 1>) -> Tensor<B, 1, Int> {
    let n = x.dims()[0];
    let device = x.device();
    let mut pivot = Tensor::<B, 1, Int>::full([n], 127, &device);
    let mut val = map.clone().select(0, pivot.clone());
    let mut step = 64i64;
    while step > 0 {
        let above = x.clone().greater(val);
        // pivot += above ? step : -step
        pivot = pivot
            .clone()
            .sub_scalar(step)
            .mask_where(above, pivot.add_scalar(step));
        val = map.clone().select(0, pivot.clone());
        step >>= 1;
    }
    let lower_pivot = pivot.clone().sub_scalar(1).clamp_min(0);
    let upper_pivot = pivot.clone().add_scalar(1).clamp_max(255);
    let lower = map.clone().select(0, lower_pivot.clone());
    let upper = map.clone().select(0, upper_pivot.clone());
    let above = x.clone().greater(val.clone());
    let take_upper = x.clone().greater((upper + val.clone()).mul_scalar(0.5));
    let take_lower = x.lower((lower + val).mul_scalar(0.5));
    let if_above = pivot.clone().mask_where(take_upper, upper_pivot);
    let if_below = pivot.mask_where(take_lower, lower_pivot);
    if_below.mask_where(above, if_above)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{DType, IntDType};

    type B = NdArray<f32>;

    /// The tensor search equals the host reference (which mirrors bnb's kernel) on a dense
    /// sweep plus every code value and every midpoint, for both maps.
    #[test]
    fn tensor_search_equals_host_reference() {
        let device = Default::default();
        let maps = Maps::<B>::new(&device);
        for signed in [true, false] {
            let host = dynamic_map::create_dynamic_map(signed);
            let lo = if signed { -1.0f32 } else { 0.0 };
            let mut xs: Vec<f32> = (0..=20_000)
                .map(|k| lo + (1.0 - lo) * k as f32 / 20_000.0)
                .collect();
            xs.extend(host.iter().copied());
            xs.extend(host.windows(2).map(|w| (w[0] + w[1]) * 0.5));
            // Past the ends, non-finite, signed zeros and subnormals: the search must still
            // agree (a zero block normalizes to NaN; rounding can step past ±1).
            xs.extend([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1.5,
                -1.5,
                1.0 + f32::EPSILON,
                -1.0 - f32::EPSILON,
                0.0,
                -0.0,
                f32::MIN_POSITIVE / 4.0,
                -f32::MIN_POSITIVE / 4.0,
            ]);
            let map = if signed { &maps.signed } else { &maps.unsigned };
            let t = Tensor::<B, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device);
            let codes = quantize_2d(map, t).cast(IntDType::U8).into_data();
            let codes = codes.to_vec::<u8>().expect("u8 codes");
            for (x, c) in xs.iter().zip(&codes) {
                assert_eq!(
                    *c,
                    dynamic_map::quantize_2d(&host, signed, *x),
                    "signed={signed} x={x}"
                );
            }
        }
    }

    #[test]
    fn dequantize_uses_block_absmax() {
        let device = Default::default();
        let maps = Maps::<B>::new(&device);
        let codes: Vec<u8> = (0..2 * BLOCK).map(|i| (i % 256) as u8).collect();
        let codes = Tensor::<B, 1, Int>::from_data(
            TensorData::new(codes.clone(), [2 * BLOCK]),
            (&device, DType::U8),
        );
        let absmax = Tensor::<B, 1>::from_data(TensorData::new(vec![2.0f32, 0.5], [2]), &device);
        let out = dequantize(&maps.signed, codes, absmax, 2)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let host = dynamic_map::create_dynamic_map(true);
        for (i, v) in out.iter().enumerate() {
            let scale = if i < BLOCK { 2.0 } else { 0.5 };
            assert_eq!(*v, host[i % 256] * scale, "i={i}");
        }
    }

    /// Largest decode error of a value in the map's range: half the widest gap, or the
    /// distance from -1 to the smallest code (the signed map has no -1.0: code 0 is -0.99297).
    fn max_error(map: &[f32; MAP_LEN]) -> f32 {
        let half_gap = 0.5 * map.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max);
        if map[0] < 0.0 {
            half_gap.max(1.0 + map[0])
        } else {
            half_gap
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Quantize-then-dequantize of random blocks (as the optimizer does with a fresh block
        /// absmax) stays within the map's largest decode error times the absmax, and the signed search
        /// agrees with the host reference on every element.
        #[test]
        fn blockwise_roundtrip(xs in proptest::collection::vec(-1e3f32..1e3, 1..(3 * BLOCK)), signed: bool) {
            let device = Default::default();
            let maps = Maps::<B>::new(&device);
            let xs: Vec<f32> = if signed { xs } else { xs.iter().map(|x| x.abs()).collect() };
            let n_blocks = xs.len().div_ceil(BLOCK);
            let mut padded = xs.clone();
            padded.resize(n_blocks * BLOCK, 0.0);
            let absmax: Vec<f32> = padded.chunks(BLOCK).map(|c| c.iter().fold(0.0f32, |a, x| a.max(x.abs()))).collect();
            let (map, host) = if signed {
                (&maps.signed, dynamic_map::create_dynamic_map(true))
            } else {
                (&maps.unsigned, dynamic_map::create_dynamic_map(false))
            };
            let t = Tensor::<B, 1>::from_data(TensorData::new(padded.clone(), [padded.len()]), &device);
            let am = Tensor::<B, 1>::from_data(TensorData::new(absmax.clone(), [n_blocks]), &device);
            let normalized = (t.reshape([n_blocks, BLOCK]) / am.clone().clamp_min(f32::MIN_POSITIVE).reshape([n_blocks, 1]))
                .reshape([n_blocks * BLOCK]);
            let x_host = normalized.clone().into_data().to_vec::<f32>().expect("f32");
            let codes = quantize_2d(map, normalized);
            let back = dequantize(map, codes.clone(), am, n_blocks).into_data().to_vec::<f32>().expect("f32");
            let codes = codes.cast(IntDType::U8).into_data().to_vec::<u8>().expect("u8");
            let err = max_error(&host);
            for (i, x) in xs.iter().enumerate() {
                // Plus one f32 rounding of the decoded product map[c] * absmax.
                let bound = (err + f32::EPSILON) * absmax[i / BLOCK];
                proptest::prop_assert!((x - back[i]).abs() <= bound, "i={} x={} back={}", i, x, back[i]);
                proptest::prop_assert_eq!(codes[i], dynamic_map::quantize_2d(&host, signed, x_host[i]));
            }
        }
    }
}
