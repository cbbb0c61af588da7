//! ggml tensor types and their CPU dequantization, bit-identical to ggml's
//! `dequantize_row_*` (ggml/src/ggml-quants.c) and gguf-py's `gguf.quants.dequantize`.
//!
//! All data is little-endian. A quantized row of `ne0` values is `ne0 / 32` blocks of 32:
//! - `Q8_0` (34 bytes): `d: f16`, `qs: [i8; 32]`; `x[j] = qs[j] as f32 * d`.
//! - `Q4_0` (18 bytes): `d: f16`, `qs: [u8; 16]`; element `j < 16` is the low nibble of `qs[j]`,
//!   element `j + 16` its high nibble; `x = (nibble - 8) as f32 * d`.
//! - `Q4_1` (20 bytes): `d: f16`, `m: f16`, `qs: [u8; 16]` (same nibble order);
//!   `x = nibble as f32 * d + m` (two roundings, no fused multiply-add, as ggml and numpy).
//! - `F32`, `F16` (IEEE half), `BF16` (upper 16 bits of an f32): one value per element.
//!
//! Every other ggml type is recognised (block geometry known, so byte ranges can be checked) and
//! reported as `GgmlType::Other(id)`.

use half::f16;

/// The ggml type of a tensor, by its GGUF id (`ggml_type` in ggml.h).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    /// A known ggml type (K-quants, IQ*, integers, …) this crate reads as bytes only.
    Other(u32),
}

/// `(id, name, block size in elements, bytes per block)`, from gguf-py 0.19 `GGML_QUANT_SIZES`.
/// Ids 4, 5 (removed Q4_2/Q4_3) and 31..=33, 36..=38 (removed repacked types) are unknown.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

// Layout checks against ggml's block structs (block_q8_0 = 2 + 32, block_q4_0 = 2 + 16, …).
const _: () = assert!(TYPES[2].3 == 2 + 16 && TYPES[3].3 == 2 + 2 + 16 && TYPES[6].3 == 2 + 32);

impl GgmlType {
    /// The type for a GGUF type id, or `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        let known = TYPES.iter().any(|t| t.0 == id);
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ if known => Self::Other(id),
            _ => return None,
        })
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        let id = self.id();
        TYPES.iter().find(|t| t.0 == id)
    }

    /// ggml's name (`"Q4_K"`, …); `"unknown"` for an `Other` id ggml does not define.
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |t| t.1)
    }

    /// `(elements per block, bytes per block)`; `None` for an `Other` id ggml does not define.
    pub fn block_geometry(self) -> Option<(u64, u64)> {
        self.entry().map(|t| (t.2, t.3))
    }

    /// Whether `dequantize` handles this type.
    pub fn is_supported(self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl std::fmt::Display for GgmlType {
    /// ggml's name, e.g. `Q4_K`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.entry() {
            Some(t) => f.write_str(t.1),
            None => write!(f, "ggml type id {}", self.id()),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (exactly the tensor's bytes, a whole number of blocks) into `out`, appending.
/// Returns `false` for a type this crate cannot dequantize. The caller has checked the byte length.
pub(crate) fn dequantize(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) -> bool {
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
        ),
        GgmlType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in data.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| f32::from((q & 0x0f) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Other(_) => return false,
    }
    true
}
