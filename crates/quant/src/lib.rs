//! qtune-quant: the quantized weight formats of qtune, bit-identical to bitsandbytes 0.50.2.
//!
//! - [`blockwise8`]: blockwise dynamic 8-bit (`quantize_blockwise`), block 4096 by default;
//! - [`fourbit`]: NF4 / FP4 (`quantize_4bit`), block 64 by default, two codes per byte;
//! - [`nested`]: double quantization of the absmax (`compress_statistics=True`);
//! - [`QuantizedTensor`]: one quantized weight with its shape and state, which also saves and
//!   loads itself as safetensors under bnb/HF names ([`io`]).
//!
//! Pure Rust on the CPU, no Burn, no GPU: this crate is the reference the GPU kernels are
//! tested against, so every rounding step mirrors bnb's CUDA kernels (see [`maps`]).
//!
//! What is bit-exact (tests/it/golden.rs, 360 cases of bnb 0.50.2 on an H100): every code
//! (all 933,504), every plain absmax, every dequantized value in the input dtype, and, given
//! bnb's offset, every nested code and nested absmax. The double-quant offset itself is our f64
//! mean rounded once, which can differ from torch's CUDA fp32 mean in the last bit (1 ulp, 16 of
//! 140 cases). Inputs with Inf/NaN are rejected rather than quantized (bnb silently encodes them).
//!
//! Reciprocal: bnb is compiled with `--use_fast_math`, so its `1.0f / absmax` is the GPU's
//! approximate `rcp.approx.ftz.f32`, one ulp off the correctly rounded value for ~13% of
//! mantissas. We reproduce it from a table measured on an H100 over all 2^23 f32 mantissas
//! (shipped as `data/rcp_f32.bin.gz`; see [`rcp`]). That is the default,
//! [`Reciprocal::BnbCuda`], and qtune-kernels' GPU quantizer uses the same table
//! ([`rcp::table_words`]); [`Reciprocal::Ieee`] (via [`QuantizedTensor::quantize_with`]) uses
//! the correctly rounded reciprocal: it differs from bnb only where `x * (1/absmax)` lands
//! exactly on a decision midpoint (5 golden codes).

pub mod blockwise8;
mod error;
pub mod fourbit;
pub mod golden;
pub mod io;
pub mod maps;
pub mod nested;
pub mod rcp;
mod source;
mod tensor;

use serde::{Deserialize, Serialize};

pub use error::QuantError;
pub use maps::{DYNAMIC_MAP, DYNAMIC_MAX_GAP, FP4_MAP, FP4_MAX_GAP, NF4_MAP, NF4_MAX_GAP};
pub use nested::NestedAbsmax;
pub use rcp::Reciprocal;
pub use source::Source;
pub use tensor::{Absmax, Dequantized, QuantizedTensor};

/// The storage format of a quantized weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// Blockwise dynamic 8-bit: one code per value.
    Blockwise8,
    /// NormalFloat4: two codes per byte.
    Nf4,
    /// 4-bit float (e2m1): two codes per byte.
    Fp4,
}

impl QuantFormat {
    /// The 4-bit kind, or `None` for 8-bit.
    pub fn four_bit(self) -> Option<fourbit::FourBit> {
        match self {
            QuantFormat::Blockwise8 => None,
            QuantFormat::Nf4 => Some(fourbit::FourBit::Nf4),
            QuantFormat::Fp4 => Some(fourbit::FourBit::Fp4),
        }
    }

    /// bnb's default block size for this format (4096 for 8-bit, 64 for 4-bit).
    pub fn default_blocksize(self) -> usize {
        match self {
            QuantFormat::Blockwise8 => blockwise8::DEFAULT_BLOCKSIZE,
            QuantFormat::Nf4 | QuantFormat::Fp4 => fourbit::DEFAULT_BLOCKSIZE,
        }
    }

    /// Block sizes this format supports.
    pub fn blocksizes(self) -> &'static [usize] {
        match self {
            QuantFormat::Blockwise8 => blockwise8::BLOCKSIZES,
            QuantFormat::Nf4 | QuantFormat::Fp4 => fourbit::BLOCKSIZES,
        }
    }

    /// Bytes of codes for `n` values.
    pub fn code_bytes(self, n: usize) -> usize {
        match self {
            QuantFormat::Blockwise8 => n,
            QuantFormat::Nf4 | QuantFormat::Fp4 => n.div_ceil(2),
        }
    }
}

/// The float dtype a weight dequantizes to (bnb's `quant_state.dtype`: the input's dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatDType {
    F32,
    F16,
    BF16,
}

impl FloatDType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            FloatDType::F32 => 4,
            FloatDType::F16 | FloatDType::BF16 => 2,
        }
    }

    /// torch's name, as bnb writes it in the quant state JSON (`"dtype": "bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDType::F32 => "float32",
            FloatDType::F16 => "float16",
            FloatDType::BF16 => "bfloat16",
        }
    }

    /// Inverse of [`FloatDType::torch_name`].
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(FloatDType::F32),
            "float16" => Some(FloatDType::F16),
            "bfloat16" => Some(FloatDType::BF16),
            _ => None,
        }
    }
}

/// How to quantize a weight. `QuantSpec::nf4()` is QLoRA's choice (NF4, block 64, double quant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantSpec {
    pub format: QuantFormat,
    pub blocksize: usize,
    /// Compress the absmax with a nested 8-bit quantization (bnb `compress_statistics`).
    pub double_quant: bool,
}

impl QuantSpec {
    /// NF4, block 64, double quant: transformers' `BitsAndBytesConfig(load_in_4bit=True,
    /// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`.
    pub fn nf4() -> Self {
        Self {
            format: QuantFormat::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }

    /// FP4, block 64, double quant.
    pub fn fp4() -> Self {
        Self {
            format: QuantFormat::Fp4,
            blocksize: 64,
            double_quant: true,
        }
    }

    /// Blockwise 8-bit, block 4096, plain f32 absmax.
    pub fn blockwise8() -> Self {
        Self {
            format: QuantFormat::Blockwise8,
            blocksize: 4096,
            double_quant: false,
        }
    }
}
