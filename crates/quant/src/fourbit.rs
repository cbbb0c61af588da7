//! NF4/FP4 blockwise 4-bit, bit-identical to bitsandbytes 0.50.2 `quantize_4bit` /
//! `dequantize_4bit` (`kQuantizeBlockwise<NF4|FP4>`, `kDequantizeBlockwise`).
//! For n values and block size B (32..=4096, a power of two; 64 is bnb's default):
//! - `absmax: [f32; ceil(n/B)]`: max |x| per block; the last block may be short;
//! - `codes: [u8; ceil(n/2)]`: byte j holds value 2j in bits 7..4 ([`EVEN_SHIFT`]) and value
//!   2j+1 in bits 3..0 ([`ODD_SHIFT`]); for odd n the last low nibble encodes a padding 0.0
//!   exactly as the kernel does (NF4: 7 = 0.0, or 0 for an all-zero block; FP4: 0);
//! - decode: `MAP[nibble] * absmax[i / B]` in f32 ([`NF4_MAP`], [`FP4_MAP`]), then cast;
//! - encode: `x * (1/absmax)` in f32 with bnb's fast-math reciprocal ([`crate::rcp`]), then
//!   bnb's decision tree (`dQuantizeNF4`/`dQuantizeFP4`).

use serde::{Deserialize, Serialize};

use crate::error::require_blocksize;
use crate::maps::{block_absmax, encode_fp4, encode_nf4, ftz};
use crate::rcp::Reciprocal;
use crate::source::Source;
use crate::{FloatDType, QuantError, QuantFormat, FP4_MAP, NF4_MAP};

/// Block sizes bnb's `quantize_4bit` accepts.
pub const BLOCKSIZES: &[usize] = &[32, 64, 128, 256, 512, 1024, 2048, 4096];
/// bnb's default 4-bit block size (also transformers' `BitsAndBytesConfig`).
pub const DEFAULT_BLOCKSIZE: usize = 64;
/// Shift of the even-indexed value (2j) inside byte j: bnb stores it in the HIGH nibble
/// (`qvals[j] = q(x[2j]) << 4 | q(x[2j+1])`; confirmed by the golden vectors).
pub const EVEN_SHIFT: u32 = 4;
/// Shift of the odd-indexed value (2j+1): the LOW nibble.
pub const ODD_SHIFT: u32 = 0;

/// Which 4-bit code book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FourBit {
    Nf4,
    Fp4,
}

impl FourBit {
    /// The 16-entry code book the nibbles index.
    pub fn map(self) -> &'static [f32; 16] {
        match self {
            FourBit::Nf4 => &NF4_MAP,
            FourBit::Fp4 => &FP4_MAP,
        }
    }

    /// The kernel's encoder for a value already scaled by `1/absmax`.
    #[inline]
    pub(crate) fn encode(self, x: f32) -> u8 {
        match self {
            FourBit::Nf4 => encode_nf4(x),
            FourBit::Fp4 => encode_fp4(x),
        }
    }
}

impl From<FourBit> for QuantFormat {
    fn from(kind: FourBit) -> Self {
        match kind {
            FourBit::Nf4 => QuantFormat::Nf4,
            FourBit::Fp4 => QuantFormat::Fp4,
        }
    }
}

/// Packs two 4-bit codes in bnb's order: `even` (value 2j) high, `odd` (value 2j+1) low.
#[inline]
pub fn pack(even: u8, odd: u8) -> u8 {
    ((even & 0x0F) << EVEN_SHIFT) | ((odd & 0x0F) << ODD_SHIFT)
}

/// Inverse of [`pack`]: `(even, odd)`.
#[inline]
pub fn unpack(byte: u8) -> (u8, u8) {
    ((byte >> EVEN_SHIFT) & 0x0F, (byte >> ODD_SHIFT) & 0x0F)
}

/// The nibble of value `i` in a packed code buffer.
#[inline]
pub fn nibble(packed: &[u8], i: usize) -> u8 {
    let (even, odd) = unpack(packed[i / 2]);
    if i % 2 == 0 {
        even
    } else {
        odd
    }
}

/// Quantizes `x` in blocks of `blocksize`; returns `(packed codes, absmax)`.
pub fn quantize(
    x: &[f32],
    blocksize: usize,
    kind: FourBit,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    quantize_source(
        "input",
        Source::F32(x),
        FloatDType::F32,
        blocksize,
        kind,
        Reciprocal::BnbCuda,
    )
}

/// Inverse of [`quantize`] for `n` values.
pub fn dequantize(
    packed: &[u8],
    absmax: &[f32],
    n: usize,
    blocksize: usize,
    kind: FourBit,
) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0.0; n];
    dequantize_into("input", packed, absmax, blocksize, kind, &mut out)?;
    Ok(out)
}

pub(crate) fn check_blocksize(
    name: &str,
    blocksize: usize,
    kind: FourBit,
) -> Result<(), QuantError> {
    require_blocksize(
        BLOCKSIZES.contains(&blocksize),
        name,
        kind.into(),
        blocksize,
        BLOCKSIZES,
    )
}

pub(crate) fn quantize_source(
    name: &str,
    src: Source<'_>,
    cast: FloatDType,
    blocksize: usize,
    kind: FourBit,
    rcp: Reciprocal,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    check_blocksize(name, blocksize, kind)?;
    let n = src.len(name)?;
    if n == 0 {
        return Err(QuantError::Empty {
            name: name.to_string(),
        });
    }
    let mut packed = Vec::with_capacity(n.div_ceil(2));
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    // Blocks hold an even number of values, so only the very last block can end mid-byte.
    src.for_each_block(name, blocksize, cast, |_, values| {
        let amax = block_absmax(values);
        let scale = rcp.inv_absmax(amax);
        absmax.push(amax);
        let q = |v: f32| kind.encode(ftz(ftz(v) * scale));
        let mut pairs = values.chunks_exact(2);
        packed.extend(pairs.by_ref().map(|p| pack(q(p[0]), q(p[1]))));
        if let [last] = pairs.remainder() {
            // The kernel loads the missing value as 0.0 and quantizes it like the others.
            packed.push(pack(q(*last), q(0.0)));
        }
    })?;
    Ok((packed, absmax))
}

pub(crate) fn dequantize_into(
    name: &str,
    packed: &[u8],
    absmax: &[f32],
    blocksize: usize,
    kind: FourBit,
    out: &mut [f32],
) -> Result<(), QuantError> {
    check_blocksize(name, blocksize, kind)?;
    let n = out.len();
    if packed.len() != n.div_ceil(2) {
        return Err(QuantError::Length {
            name: name.to_string(),
            what: "packed 4-bit codes",
            expected: n.div_ceil(2),
            got: packed.len(),
        });
    }
    crate::blockwise8::check_lengths(name, n, absmax.len(), blocksize)?;
    let map = kind.map();
    let half = blocksize / 2;
    for ((out, bytes), &amax) in out
        .chunks_mut(blocksize)
        .zip(packed.chunks(half))
        .zip(absmax)
    {
        for (pair, &byte) in out.chunks_mut(2).zip(bytes) {
            let (even, odd) = unpack(byte);
            pair[0] = ftz(map[even as usize] * amax);
            if let Some(o) = pair.get_mut(1) {
                *o = ftz(map[odd as usize] * amax);
            }
        }
    }
    Ok(())
}
