//! [`QuantizedTensor`]: one frozen weight in one of the three formats, with everything needed to
//! decode it (and nothing else: loading one never needs the original weights).

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::nested::NestedAbsmax;
use crate::rcp::Reciprocal;
use crate::source::Source;
use crate::{blockwise8, fourbit, FloatDType, QuantError, QuantFormat, QuantSpec, DYNAMIC_MAP};

/// The per-block scales: f32, or double-quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Absmax {
    Plain(Vec<f32>),
    Nested(NestedAbsmax),
}

impl Absmax {
    /// Number of blocks it describes.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(a) => a.len(),
            Absmax::Nested(n) => n.codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A quantized weight. Invariants (checked by [`QuantizedTensor::validate`], kept by every
/// constructor here): `codes.len() == format.code_bytes(numel)`, one absmax per block of
/// `blocksize`, `blocksize` supported by `format`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizedTensor {
    pub format: QuantFormat,
    /// Logical shape (row-major), e.g. `[out_features, in_features]` for a Linear weight.
    pub shape: Vec<usize>,
    pub blocksize: usize,
    /// 8-bit: one code per value; 4-bit: packed, see [`fourbit`] for the nibble order.
    pub codes: Vec<u8>,
    pub absmax: Absmax,
    /// The dtype the weight dequantizes to (the dtype its values had when quantized).
    pub dtype: FloatDType,
}

/// Dequantized values in the weight's dtype, rounded exactly as bnb's kernel stores them.
#[derive(Clone, Debug, PartialEq)]
pub enum Dequantized {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Dequantized {
    pub fn dtype(&self) -> FloatDType {
        match self {
            Dequantized::F32(_) => FloatDType::F32,
            Dequantized::F16(_) => FloatDType::F16,
            Dequantized::BF16(_) => FloatDType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Dequantized::F32(v) => v.len(),
            Dequantized::F16(v) => v.len(),
            Dequantized::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw bit patterns widened to u32 (f32 bits, or the 16 bits of f16/bf16): for exact
    /// comparisons where -0.0 != 0.0.
    pub fn to_bits(&self) -> Vec<u32> {
        match self {
            Dequantized::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Dequantized::F16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
            Dequantized::BF16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
        }
    }

    /// Little-endian bytes, as a safetensors tensor of this dtype holds them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Dequantized::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dequantized::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dequantized::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Widened to f32 (exact).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Dequantized::F32(v) => v.clone(),
            Dequantized::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Dequantized::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

impl QuantizedTensor {
    /// Quantizes `values` (row-major, `shape`) as `spec` says. `values` are first rounded to
    /// `dtype` (a no-op for values that came from a tensor of that dtype), as bnb quantizes the
    /// tensor in the dtype it is given.
    pub fn quantize(
        name: &str,
        values: &[f32],
        shape: &[usize],
        spec: QuantSpec,
        dtype: FloatDType,
    ) -> Result<Self, QuantError> {
        Self::quantize_source(name, Source::F32(values), shape, spec, dtype)
    }

    /// [`QuantizedTensor::quantize`] with a chosen reciprocal `1/absmax`: the default
    /// ([`Reciprocal::BnbCuda`]) is bit-exact with bnb's CUDA build; [`Reciprocal::Ieee`] is what
    /// qtune-kernels' GPU quantizer computes (its reference in the GPU self-test).
    pub fn quantize_with(
        name: &str,
        values: &[f32],
        shape: &[usize],
        spec: QuantSpec,
        dtype: FloatDType,
        rcp: Reciprocal,
    ) -> Result<Self, QuantError> {
        Self::quantize_source_with(name, Source::F32(values), shape, spec, dtype, rcp)
    }

    /// Quantizes little-endian `src_dtype` bytes (a safetensors tensor's data) block by block,
    /// never holding more than one block in f32. The result dequantizes to `src_dtype`.
    pub fn quantize_bytes(
        name: &str,
        bytes: &[u8],
        src_dtype: FloatDType,
        shape: &[usize],
        spec: QuantSpec,
    ) -> Result<Self, QuantError> {
        let src = Source::Bytes {
            bytes,
            dtype: src_dtype,
        };
        Self::quantize_source(name, src, shape, spec, src_dtype)
    }

    /// The general form of [`QuantizedTensor::quantize`]: values from any [`Source`], rounded to
    /// `dtype` block by block.
    pub fn quantize_source(
        name: &str,
        src: Source<'_>,
        shape: &[usize],
        spec: QuantSpec,
        dtype: FloatDType,
    ) -> Result<Self, QuantError> {
        Self::quantize_source_with(name, src, shape, spec, dtype, Reciprocal::BnbCuda)
    }

    /// [`QuantizedTensor::quantize_source`] with a chosen reciprocal (see
    /// [`QuantizedTensor::quantize_with`]); it applies to the nested absmax too.
    pub fn quantize_source_with(
        name: &str,
        src: Source<'_>,
        shape: &[usize],
        spec: QuantSpec,
        dtype: FloatDType,
        rcp: Reciprocal,
    ) -> Result<Self, QuantError> {
        let numel = shape.iter().product::<usize>();
        let n = src.len(name)?;
        if n != numel {
            return Err(QuantError::Length {
                name: name.to_string(),
                what: "values (vs. the product of the shape)",
                expected: numel,
                got: n,
            });
        }
        let (codes, absmax) = quantize_blocks(name, src, n, spec, dtype, rcp)?;
        let absmax = if spec.double_quant {
            let offset = crate::nested::mean_f32(&absmax);
            Absmax::Nested(NestedAbsmax::quantize_with_offset_rcp(
                name, &absmax, offset, rcp,
            )?)
        } else {
            Absmax::Plain(absmax)
        };
        Ok(Self {
            format: spec.format,
            shape: shape.to_vec(),
            blocksize: spec.blocksize,
            codes,
            absmax,
            dtype,
        })
    }

    /// The spec this tensor was quantized with.
    pub fn spec(&self) -> QuantSpec {
        QuantSpec {
            format: self.format,
            blocksize: self.blocksize,
            double_quant: matches!(self.absmax, Absmax::Nested(_)),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks: `ceil(numel / blocksize)`.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize.max(1))
    }

    /// Checks the invariants, naming `name` in the error.
    pub fn validate(&self, name: &str) -> Result<(), QuantError> {
        let n = self.numel();
        match self.format.four_bit() {
            None => blockwise8::check_blocksize(name, self.blocksize)?,
            Some(kind) => fourbit::check_blocksize(name, self.blocksize, kind)?,
        }
        let expected = self.format.code_bytes(n);
        if self.codes.len() != expected {
            return Err(QuantError::Length {
                name: name.to_string(),
                what: "codes",
                expected,
                got: self.codes.len(),
            });
        }
        blockwise8::check_lengths(name, n, self.absmax.len(), self.blocksize)?;
        if let Absmax::Nested(nested) = &self.absmax {
            blockwise8::check_blocksize(name, nested.blocksize)?;
            blockwise8::check_lengths(
                name,
                nested.codes.len(),
                nested.absmax.len(),
                nested.blocksize,
            )?;
        }
        Ok(())
    }

    /// The f32 absmax per block (decodes the double quantization).
    /// Returns NaNs if the tensor fails [`QuantizedTensor::validate`].
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Nested(nested) => nested
                .decode("absmax")
                .unwrap_or_else(|_| vec![f32::NAN; nested.codes.len()]),
        }
    }

    /// The code book the codes index: [`DYNAMIC_MAP`] (256) or [`NF4_MAP`](crate::NF4_MAP) /
    /// [`FP4_MAP`](crate::FP4_MAP) (16).
    pub fn code_map(&self) -> &'static [f32] {
        match self.format.four_bit() {
            None => &DYNAMIC_MAP,
            Some(kind) => kind.map(),
        }
    }

    /// Dequantized values in f32, before the cast to `dtype` (`map[code] * absmax` per value).
    pub fn try_dequantize(&self) -> Result<Vec<f32>, QuantError> {
        const NAME: &str = "dequantize";
        self.validate(NAME)?;
        let absmax = match &self.absmax {
            Absmax::Plain(a) => std::borrow::Cow::Borrowed(a),
            Absmax::Nested(nested) => std::borrow::Cow::Owned(nested.decode(NAME)?),
        };
        let mut out = vec![0.0; self.numel()];
        match self.format.four_bit() {
            None => {
                blockwise8::dequantize_into(NAME, &self.codes, &absmax, self.blocksize, &mut out)?
            }
            Some(kind) => fourbit::dequantize_into(
                NAME,
                &self.codes,
                &absmax,
                self.blocksize,
                kind,
                &mut out,
            )?,
        }
        Ok(out)
    }

    /// [`QuantizedTensor::try_dequantize`] for a valid tensor; all NaN for an invalid one
    /// (every constructor in this crate returns valid tensors).
    pub fn dequantize(&self) -> Vec<f32> {
        self.try_dequantize()
            .unwrap_or_else(|_| vec![f32::NAN; self.numel()])
    }

    /// Dequantized values rounded to `dtype` exactly as bnb's kernel stores them (f16/bf16:
    /// round to nearest even from the f32 product).
    pub fn dequantize_to_bits(&self) -> Dequantized {
        let values = self.dequantize();
        match self.dtype {
            FloatDType::F32 => Dequantized::F32(values),
            FloatDType::F16 => Dequantized::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            FloatDType::BF16 => {
                Dequantized::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect())
            }
        }
    }

    /// Bytes this weight keeps resident: codes, absmax and the nested state (code books are
    /// shared constants and not counted).
    pub fn resident_bytes(&self) -> usize {
        self.codes.len()
            + match &self.absmax {
                Absmax::Plain(a) => 4 * a.len(),
                Absmax::Nested(nested) => nested.resident_bytes(),
            }
    }
}

/// Values per thread below which [`quantize_blocks`] stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 20;

/// Codes and plain absmax of `src` (`n` values), its blocks split over the machine's cores in
/// contiguous runs of whole blocks. Every block is quantized independently, so the result is
/// the serial one byte for byte (a 4-bit run holds an even number of values, since the
/// block sizes are even, so no packed byte straddles two runs). A NaN/Inf error names the
/// first bad value of the tensor, as the serial loop would.
fn quantize_blocks(
    name: &str,
    src: Source<'_>,
    n: usize,
    spec: QuantSpec,
    dtype: FloatDType,
    rcp: Reciprocal,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    let one = |src: Source<'_>| match spec.format.four_bit() {
        None => blockwise8::quantize_source(name, src, dtype, spec.blocksize, rcp),
        Some(kind) => fourbit::quantize_source(name, src, dtype, spec.blocksize, kind, rcp),
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let blocks = n.div_ceil(spec.blocksize.max(1));
    let runs = threads.min(n / PARALLEL_MIN).min(blocks);
    if runs <= 1 {
        return one(src);
    }
    let per_run = blocks.div_ceil(runs) * spec.blocksize;
    let bounds: Vec<(usize, usize)> = (0..n)
        .step_by(per_run)
        .map(|start| (start, (start + per_run).min(n)))
        .collect();
    let parts: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = bounds
            .iter()
            .map(|&(start, end)| scope.spawn(move || one(src.slice(start, end))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let (mut codes, mut absmax) = (Vec::new(), Vec::with_capacity(blocks));
    for (part, &(start, _)) in parts.into_iter().zip(&bounds) {
        match part {
            Ok((c, a)) => {
                codes.extend_from_slice(&c);
                absmax.extend_from_slice(&a);
            }
            // A run's index counts from the run's start.
            Err(QuantError::NonFinite { name, index, value }) => {
                return Err(QuantError::NonFinite {
                    name,
                    index: start + index,
                    value,
                })
            }
            Err(e) => return Err(e),
        }
    }
    Ok((codes, absmax))
}
