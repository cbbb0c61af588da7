//! Reading bitsandbytes' golden fixture (tests/fixtures/bnb, written by its make.py:
//! `meta.json` lists the cases, `golden.safetensors` holds their inputs and bnb's outputs):
//! shared by the bit-exactness tests (tests/it/golden.rs) and the GPU quantizer's check
//! (xtask `gpu_check/load.rs`).
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::source::decode_le;
use crate::{FloatDType, QuantError, QuantFormat, QuantSpec};

/// `meta.json`.
#[derive(Debug, Deserialize)]
pub struct GoldenMeta {
    /// The bitsandbytes version that made the fixture.
    pub bitsandbytes: String,
    pub cases: Vec<GoldenCase>,
}

/// One case: `input` (`numel` values, quantized from `dtype`) in `format`, with bnb's outputs
/// under `{name}.codes`, `{name}.absmax`, … in `golden.safetensors`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub input: String,
    pub format: String,
    pub numel: usize,
    pub dtype: String,
    pub blocksize: usize,
    #[serde(default)]
    pub double_quant: bool,
}

impl GoldenCase {
    /// The case's format, block size and double quant.
    pub fn spec(&self) -> Result<QuantSpec, QuantError> {
        let format = match self.format.as_str() {
            "blockwise8" => QuantFormat::Blockwise8,
            "nf4" => QuantFormat::Nf4,
            "fp4" => QuantFormat::Fp4,
            other => return Err(self.invalid(format!("unknown format {other}"))),
        };
        Ok(QuantSpec {
            format,
            blocksize: self.blocksize,
            double_quant: self.double_quant,
        })
    }

    /// The dtype the input is rounded to before bnb quantizes it.
    pub fn float_dtype(&self) -> Result<FloatDType, QuantError> {
        match self.dtype.as_str() {
            "f32" => Ok(FloatDType::F32),
            "f16" => Ok(FloatDType::F16),
            "bf16" => Ok(FloatDType::BF16),
            other => Err(self.invalid(format!("unknown dtype {other}"))),
        }
    }

    fn invalid(&self, reason: String) -> QuantError {
        QuantError::Invalid {
            name: format!("meta.json case {}", self.name),
            reason,
        }
    }
}

/// Tensor `name` of a fixture file widened to f32 (exact for f32, f16 and bf16).
pub fn tensor_f32(st: &SafeTensors<'_>, name: &str) -> Result<Vec<f32>, QuantError> {
    let invalid = |reason: String| QuantError::Invalid {
        name: name.to_string(),
        reason,
    };
    let t = st.tensor(name).map_err(|e| invalid(e.to_string()))?;
    let dtype = match t.dtype() {
        Dtype::F32 => FloatDType::F32,
        Dtype::F16 => FloatDType::F16,
        Dtype::BF16 => FloatDType::BF16,
        other => return Err(invalid(format!("unexpected dtype {other:?}"))),
    };
    let mut out = vec![0f32; t.data().len() / dtype.size_in_bytes()];
    decode_le(t.data(), dtype, &mut out);
    Ok(out)
}
