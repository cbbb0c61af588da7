//! Input values, handed to the quantizers one block at a time.
//!
//! A 6B-parameter checkpoint arrives as bf16/f16 bytes from a memory-mapped safetensors file;
//! converting a whole 16384×4096 weight to f32 first would cost 256 MiB per tensor for nothing.
//! So the quantizers only ever see one block of f32 (≤ 4096 values, one reused buffer), and an
//! f32 slice is read in place without any copy.

use half::{bf16, f16};

use crate::{FloatDType, QuantError};

/// The values of one tensor: f32 in place, or little-endian bytes of `dtype` (as stored in
/// safetensors) converted block by block.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    F32(&'a [f32]),
    Bytes { bytes: &'a [u8], dtype: FloatDType },
}

impl<'a> Source<'a> {
    /// Values `start..end` of this source (indices in values, not bytes; in range).
    pub(crate) fn slice(&self, start: usize, end: usize) -> Source<'a> {
        match *self {
            Source::F32(x) => Source::F32(&x[start..end]),
            Source::Bytes { bytes, dtype } => {
                let size = dtype.size_in_bytes();
                Source::Bytes {
                    bytes: &bytes[start * size..end * size],
                    dtype,
                }
            }
        }
    }

    /// Number of values, or an error if the byte length is not a multiple of the element size.
    pub(crate) fn len(&self, name: &str) -> Result<usize, QuantError> {
        match *self {
            Source::F32(x) => Ok(x.len()),
            Source::Bytes { bytes, dtype } => {
                let size = dtype.size_in_bytes();
                if bytes.len() % size != 0 {
                    return Err(QuantError::Invalid {
                        name: name.to_string(),
                        reason: format!(
                            "{} bytes is not a whole number of {dtype:?} values",
                            bytes.len()
                        ),
                    });
                }
                Ok(bytes.len() / size)
            }
        }
    }

    /// Calls `f(block_index, values)` for every block of `blocksize` values (the last block may
    /// be short), each value first rounded to `cast` (RNE, as torch's `.to(dtype)` before bnb
    /// sees the tensor). Stops at the first NaN/Inf (after the cast: an f32 beyond the f16 range
    /// is one) with an error that names the tensor and the index.
    pub(crate) fn for_each_block(
        &self,
        name: &str,
        blocksize: usize,
        cast: FloatDType,
        mut f: impl FnMut(usize, &[f32]),
    ) -> Result<(), QuantError> {
        let n = self.len(name)?;
        let in_place = matches!((self, cast), (Source::F32(_), FloatDType::F32));
        let mut buf: Vec<f32> = if in_place {
            Vec::new()
        } else {
            vec![0.0; blocksize.min(n)]
        };
        for (block, start) in (0..n).step_by(blocksize).enumerate() {
            let end = (start + blocksize).min(n);
            let values: &[f32] = match *self {
                Source::F32(x) if in_place => &x[start..end],
                Source::F32(x) => {
                    let out = &mut buf[..end - start];
                    out.copy_from_slice(&x[start..end]);
                    round_to(cast, out);
                    out
                }
                Source::Bytes { bytes, dtype } => {
                    let out = &mut buf[..end - start];
                    let size = dtype.size_in_bytes();
                    decode_le(&bytes[start * size..end * size], dtype, out);
                    round_to(cast, out);
                    out
                }
            };
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(QuantError::NonFinite {
                    name: name.to_string(),
                    index: start + i,
                    value: values[i],
                });
            }
            f(block, values);
        }
        Ok(())
    }
}

/// Little-endian `dtype` bytes → f32 (exact: f16 and bf16 widen without rounding).
pub(crate) fn decode_le(bytes: &[u8], dtype: FloatDType, out: &mut [f32]) {
    match dtype {
        FloatDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FloatDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FloatDType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
    }
}

/// Rounds every value to `dtype` and back (RNE; identity for f32).
fn round_to(dtype: FloatDType, values: &mut [f32]) {
    match dtype {
        FloatDType::F32 => {}
        FloatDType::F16 => values
            .iter_mut()
            .for_each(|v| *v = f16::from_f32(*v).to_f32()),
        FloatDType::BF16 => values
            .iter_mut()
            .for_each(|v| *v = bf16::from_f32(*v).to_f32()),
    }
}
