//! Blockwise dynamic 8-bit, bit-identical to bitsandbytes 0.50.2 `quantize_blockwise` /
//! `dequantize_blockwise` with the default signed dynamic map (`kQuantizeBlockwise<General8bit>`).
//! For n values and block size B (64..=4096, a power of two; 4096 is bnb's default):
//! - `codes: [u8; n]`: `codes[i]` indexes [`DYNAMIC_MAP`];
//! - `absmax: [f32; ceil(n/B)]`: max |x| of each block (the last block may be short);
//! - decode: `DYNAMIC_MAP[codes[i]] * absmax[i / B]` in f32, then cast to the weight dtype;
//! - encode: `x * (1/absmax)` in f32 with bnb's fast-math reciprocal ([`crate::rcp`]), then
//!   bnb's binary search with float midpoints.
//!
//! With double quant an 8-bit weight nests its absmax in blocks of 256 like the 4-bit formats
//! (our choice for a self-describing state; bnb's `quantize_blockwise(nested=True)` would reuse
//! the outer block size, but bnb has no 8-bit blockwise *weight* format to match).

use crate::error::require_blocksize;
use crate::maps::{block_absmax, encode_dynamic, ftz, inv_absmax};
use crate::rcp::Reciprocal;
use crate::source::Source;
use crate::{FloatDType, QuantError, QuantFormat, DYNAMIC_MAP};

/// Block sizes bnb's CUDA `quantize_blockwise` accepts.
pub const BLOCKSIZES: &[usize] = &[64, 128, 256, 512, 1024, 2048, 4096];
/// bnb's default for `quantize_blockwise` (and ours for 8-bit weights).
pub const DEFAULT_BLOCKSIZE: usize = 4096;

/// Quantizes `x` in blocks of `blocksize`; returns `(codes, absmax)`.
pub fn quantize(x: &[f32], blocksize: usize) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    quantize_source(
        "input",
        Source::F32(x),
        FloatDType::F32,
        blocksize,
        Reciprocal::BnbCuda,
    )
}

/// Inverse of [`quantize`]: `codes.len()` values in f32.
pub fn dequantize(codes: &[u8], absmax: &[f32], blocksize: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0.0; codes.len()];
    dequantize_into("input", codes, absmax, blocksize, &mut out)?;
    Ok(out)
}

/// Blockwise 8-bit over any sorted 256-entry map (bnb `quantize_blockwise(code=...)`, e.g. the
/// unsigned dynamic map of 8-bit optimizer states): the same search and midpoint rule.
/// Any block size ≥ 1 is accepted (optimizer states use 256; no bnb kernel constraint applies).
pub fn quantize_with_map(
    x: &[f32],
    blocksize: usize,
    map: &[f32; 256],
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    require(blocksize != 0, "input", blocksize)?;
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    Source::F32(x).for_each_block("input", blocksize, FloatDType::F32, |_, values| {
        let amax = block_absmax(values);
        let scale = inv_absmax(amax);
        absmax.push(amax);
        codes.extend(
            values
                .iter()
                .map(|&v| encode_dynamic(map, ftz(ftz(v) * scale))),
        );
    })?;
    Ok((codes, absmax))
}

/// Inverse of [`quantize_with_map`]: `map[codes[i]] * absmax[i / blocksize]`.
pub fn dequantize_with_map(
    codes: &[u8],
    absmax: &[f32],
    blocksize: usize,
    map: &[f32; 256],
) -> Result<Vec<f32>, QuantError> {
    require(blocksize != 0, "input", blocksize)?;
    check_lengths("input", codes.len(), absmax.len(), blocksize)?;
    let mut out = Vec::with_capacity(codes.len());
    for (codes, &amax) in codes.chunks(blocksize).zip(absmax) {
        out.extend(codes.iter().map(|&c| ftz(map[c as usize] * amax)));
    }
    Ok(out)
}

pub(crate) fn check_blocksize(name: &str, blocksize: usize) -> Result<(), QuantError> {
    require(BLOCKSIZES.contains(&blocksize), name, blocksize)
}

/// `Ok` when `ok` holds, else the 8-bit block-size error for `name`.
fn require(ok: bool, name: &str, blocksize: usize) -> Result<(), QuantError> {
    require_blocksize(ok, name, QuantFormat::Blockwise8, blocksize, BLOCKSIZES)
}

pub(crate) fn quantize_source(
    name: &str,
    src: Source<'_>,
    cast: FloatDType,
    blocksize: usize,
    rcp: Reciprocal,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    check_blocksize(name, blocksize)?;
    let n = src.len(name)?;
    if n == 0 {
        return Err(QuantError::Empty {
            name: name.to_string(),
        });
    }
    let mut codes = Vec::with_capacity(n);
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    src.for_each_block(name, blocksize, cast, |_, values| {
        let amax = block_absmax(values);
        let scale = rcp.inv_absmax(amax);
        absmax.push(amax);
        codes.extend(
            values
                .iter()
                .map(|&v| encode_dynamic(&DYNAMIC_MAP, ftz(ftz(v) * scale))),
        );
    })?;
    Ok((codes, absmax))
}

/// Decodes into `out` (length = number of values = `codes.len()`).
pub(crate) fn dequantize_into(
    name: &str,
    codes: &[u8],
    absmax: &[f32],
    blocksize: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    check_blocksize(name, blocksize)?;
    check_lengths(name, codes.len(), absmax.len(), blocksize)?;
    if out.len() != codes.len() {
        return Err(QuantError::Length {
            name: name.to_string(),
            what: "output",
            expected: codes.len(),
            got: out.len(),
        });
    }
    for ((out, codes), &amax) in out
        .chunks_mut(blocksize)
        .zip(codes.chunks(blocksize))
        .zip(absmax)
    {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = ftz(DYNAMIC_MAP[c as usize] * amax);
        }
    }
    Ok(())
}

pub(crate) fn check_lengths(
    name: &str,
    n: usize,
    n_absmax: usize,
    blocksize: usize,
) -> Result<(), QuantError> {
    if n_absmax != n.div_ceil(blocksize) {
        return Err(QuantError::Length {
            name: name.to_string(),
            what: "absmax",
            expected: n.div_ceil(blocksize),
            got: n_absmax,
        });
    }
    Ok(())
}
