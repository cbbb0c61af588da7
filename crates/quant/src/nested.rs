//! Double quantization of the per-block absmax (bnb `compress_statistics=True`).
//!
//! bnb `quantize_4bit`: `offset = absmax.mean()` (torch, CUDA, fp32), then
//! `quantize_blockwise(absmax - offset, blocksize=256)` with the signed dynamic map. Decoding is
//! `dequantize_blockwise(codes) + offset`: the product in the kernel, the add in a separate torch
//! op (two f32 roundings, never fused). With block 64 this stores 1 byte + 4/256 per block
//! instead of 4 bytes.
//!
//! The nested 8-bit quantizer multiplies by bnb's fast-math reciprocal like the outer one
//! ([`crate::rcp`]); [`NestedAbsmax::quantize_with_offset_rcp`] can choose the IEEE one.

use serde::{Deserialize, Serialize};

use crate::rcp::Reciprocal;
use crate::source::Source;
use crate::{blockwise8, FloatDType, QuantError, DYNAMIC_MAP};

/// bnb's nested block size (`quantize_4bit` hard-codes 256).
pub const NESTED_BLOCKSIZE: usize = 256;

/// Absmax stored as 8-bit codes of `absmax - offset` over [`DYNAMIC_MAP`], in blocks of
/// `blocksize` (256) with their own f32 absmax: `absmax[i] = DYNAMIC_MAP[codes[i]] *
/// absmax_nested[i / blocksize] + offset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NestedAbsmax {
    /// One u8 code per block of the outer tensor (bnb's `absmax` tensor when nested).
    pub codes: Vec<u8>,
    /// One f32 per `blocksize` codes (bnb's `nested_absmax`).
    pub absmax: Vec<f32>,
    /// The mean subtracted before quantizing (bnb's `nested_offset`).
    pub offset: f32,
    pub blocksize: usize,
}

impl NestedAbsmax {
    /// Compresses `absmax` as bnb does, with our mean as the offset (see [`mean_f32`]).
    pub fn quantize(name: &str, absmax: &[f32]) -> Result<Self, QuantError> {
        Self::quantize_with_offset(name, absmax, mean_f32(absmax))
    }

    /// Compresses `absmax` around a given `offset`. Given bnb's own offset this reproduces its
    /// nested codes and absmax bit for bit (the golden tests check exactly that).
    pub fn quantize_with_offset(
        name: &str,
        absmax: &[f32],
        offset: f32,
    ) -> Result<Self, QuantError> {
        Self::quantize_with_offset_rcp(name, absmax, offset, Reciprocal::BnbCuda)
    }

    /// [`NestedAbsmax::quantize_with_offset`] with a chosen reciprocal for the nested 8-bit
    /// quantizer ([`Reciprocal::Ieee`] reproduces qtune-kernels' device-side double quant).
    pub fn quantize_with_offset_rcp(
        name: &str,
        absmax: &[f32],
        offset: f32,
        rcp: Reciprocal,
    ) -> Result<Self, QuantError> {
        if !offset.is_finite() {
            return Err(QuantError::NonFinite {
                name: format!("{name} (nested offset)"),
                index: 0,
                value: offset,
            });
        }
        // torch's elementwise `absmax - offset`: plain IEEE f32, then the 8-bit kernel.
        let shifted: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (codes, nested) = blockwise8::quantize_source(
            name,
            Source::F32(&shifted),
            FloatDType::F32,
            NESTED_BLOCKSIZE,
            rcp,
        )?;
        Ok(Self {
            codes,
            absmax: nested,
            offset,
            blocksize: NESTED_BLOCKSIZE,
        })
    }

    /// The f32 absmax, decoded as bnb's `dequantize_blockwise(...) + offset`.
    pub fn decode(&self, name: &str) -> Result<Vec<f32>, QuantError> {
        let mut out = vec![0.0; self.codes.len()];
        blockwise8::dequantize_into(name, &self.codes, &self.absmax, self.blocksize, &mut out)?;
        for a in &mut out {
            *a += self.offset;
        }
        Ok(out)
    }

    /// Bytes held: codes, nested absmax and the offset.
    pub fn resident_bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len() + 4
    }
}

/// The mean of `x` rounded once to f32 (summed in f64). torch's CUDA fp32 `mean()` sums in f32
/// in a tree order of its own, so the two may differ in the last bit; the golden tests allow
/// exactly that and nothing else.
pub fn mean_f32(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64) as f32
}

// The nested codes index the same signed dynamic map as the 8-bit format.
const _: () = assert!(DYNAMIC_MAP.len() == 256);
