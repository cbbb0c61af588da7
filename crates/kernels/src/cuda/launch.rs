//! Host side of the CubeCL kernels: buffer allocation, vectorized-or-scalar choice, dtype dispatch
//! (the decode GEMVs' in `gemv.rs`, whose output rows per plane are re-exported here).

use burn::tensor::{backend::Backend, bf16, f16, DType, Shape};
use burn_cubecl::{kernel::cast, kernel::into_contiguous, tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};
use qtune_quant::QuantFormat;

pub use super::gemv::{
    gemv_rows_per_plane, gemv_x_shared, set_gemv_rows_per_plane, set_gemv_x_shared,
};
use super::kernels;
use crate::{AbsmaxPrimitive, QWeightPrimitive};

/// A CubeCL backend whose tensors are `CubeTensor<R>` (any float/int element parameters).
pub trait CubeB<R: CubeRuntime>:
    Backend<FloatTensorPrimitive = CubeTensor<R>, IntTensorPrimitive = CubeTensor<R>>
{
}
impl<R: CubeRuntime, B> CubeB<R> for B where
    B: Backend<FloatTensorPrimitive = CubeTensor<R>, IntTensorPrimitive = CubeTensor<R>>
{
}

/// Tuning of the 4-bit vectorized dequant: words (8 values each) per unit, and whether a nested
/// absmax is resolved in-kernel (`fused`) or by a separate product pass. Both variants are
/// bit-identical (GPU self-test); the default is the faster one measured on an H100: one word
/// per unit, fused (NF4 + DQ 16384×4096 at 2,504 GB/s against 2,271 for the separate product
/// pass, copy 2,786; session 15, call 2).
static VARIANT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_VARIANT);
const DEFAULT_VARIANT: usize = 1 | 4;

/// Select the 4-bit dequant variant (`words_per_unit` 1 or 2, `fused_nested`); for the bench and
/// self-test, which compare them.
pub fn set_dequant_variant(words_per_unit: usize, fused_nested: bool) {
    let v = words_per_unit.clamp(1, 2) | (usize::from(fused_nested) << 2);
    VARIANT.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The current `(words_per_unit, fused_nested)`.
pub fn dequant_variant() -> (usize, bool) {
    let v = VARIANT.load(std::sync::atomic::Ordering::Relaxed);
    (v & 3, v & 4 != 0)
}

/// Units per cube for every kernel here (the 8-bit kernels stage a 256-entry map per cube).
const CUBE: u32 = 256;
/// Values per unit in the vectorized dequant kernels (one 16-byte store for bf16/f16).
pub(crate) const PER_UNIT: usize = 8;
/// Largest `CubeCount` x dimension; larger launches spread over y.
const MAX_X: usize = 65_535;

pub(crate) fn cube_count(units: usize) -> CubeCount {
    grid(units.div_ceil(CUBE as usize).max(1))
}

/// `cubes` cubes, spread over y past the x limit (kernels index them by `CUBE_POS`).
pub(crate) fn grid(cubes: usize) -> CubeCount {
    if cubes <= MAX_X {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX_X as u32, cubes.div_ceil(MAX_X) as u32, 1)
    }
}

pub(crate) fn cube_dim() -> CubeDim {
    CubeDim::new_1d(CUBE)
}

/// A fresh contiguous 1-D/2-D tensor of `dtype` on `like`'s device.
pub(crate) fn empty<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    let numel: usize = shape.iter().product();
    let handle = like.client.empty(numel.max(1) * dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        handle,
        dtype,
    )
}

pub(crate) fn as_u8<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    // Records bring Int tensors back as I32/I64 (burn pitfall 9); the kernels read bytes.
    into_contiguous(if t.dtype == DType::U8 {
        t
    } else {
        cast(t, DType::U8)
    })
}

pub(crate) fn as_f32<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(if t.dtype == DType::F32 {
        t
    } else {
        cast(t, DType::F32)
    })
}

pub(crate) fn array<R: CubeRuntime>(t: &CubeTensor<R>, len: usize) -> ArrayArg<R> {
    // SAFETY: `len` never exceeds the handle's size in elements of the kernel's type (checked
    // by the callers' layout arithmetic: codes/absmax lengths were validated at upload).
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) }
}

/// Resolve the absmax to one f32 buffer per block plus the offset to add in the dequant kernel.
fn block_scales<R: CubeRuntime, B: CubeB<R>>(
    absmax: AbsmaxPrimitive<B>,
    num_blocks: usize,
) -> (CubeTensor<R>, f32, bool) {
    match absmax {
        AbsmaxPrimitive::Plain(a) => (as_f32(a), 0.0, false),
        AbsmaxPrimitive::Nested(n) => {
            let (offset, blocksize) = (n.offset, n.blocksize);
            let (codes, absmax, map) = (as_u8(n.codes), as_f32(n.absmax), as_f32(n.map));
            let prod = empty(&codes, vec![num_blocks], DType::F32);
            // SAFETY: lengths match the validated layout; one unit per block.
            unsafe {
                kernels::nested_product_kernel::launch_unchecked::<R>(
                    &codes.client,
                    cube_count(num_blocks),
                    cube_dim(),
                    array(&codes, num_blocks),
                    array(&absmax, num_blocks.div_ceil(blocksize)),
                    array(&map, 256),
                    array(&prod, num_blocks),
                    num_blocks,
                    blocksize,
                );
            }
            (prod, offset, true)
        }
    }
}

/// The absmax arguments of the 4-bit dequant and the GEMV kernels: per-block scales (plain, or
/// the double-quant product from [`block_scales`]), or with `fused` the double-quant state itself
/// (nested codes, nested absmax, nested map), resolved in the kernel. Unused arrays are dummies
/// the kernel never reads (`len` 1).
pub(crate) struct ScaleArgs<R: CubeRuntime> {
    pub(crate) scales: CubeTensor<R>,
    pub(crate) ncodes: CubeTensor<R>,
    pub(crate) nabs: CubeTensor<R>,
    pub(crate) nmap: CubeTensor<R>,
    pub(crate) offset: f32,
    pub(crate) nested: bool,
    pub(crate) nested_blocksize: usize,
    pub(crate) fused: bool,
    /// Lengths of `scales`, `ncodes`, `nabs`, `nmap`.
    pub(crate) lens: [usize; 4],
}

pub(crate) fn scale_args<R: CubeRuntime, B: CubeB<R>>(
    absmax: AbsmaxPrimitive<B>,
    num_blocks: usize,
    fuse: bool,
    dummy: &CubeTensor<R>,
) -> ScaleArgs<R> {
    match absmax {
        AbsmaxPrimitive::Nested(n) if fuse => {
            let (offset, blocksize) = (n.offset, n.blocksize);
            let (nc, na, nm) = (as_u8(n.codes), as_f32(n.absmax), as_f32(n.map));
            ScaleArgs {
                scales: na.clone(),
                ncodes: nc,
                nabs: na,
                nmap: nm,
                offset,
                nested: true,
                nested_blocksize: blocksize,
                fused: true,
                lens: [1, num_blocks, num_blocks.div_ceil(blocksize), 256],
            }
        }
        absmax => {
            let (scales, offset, nested) = block_scales(absmax, num_blocks);
            ScaleArgs {
                scales: scales.clone(),
                ncodes: dummy.clone(),
                nabs: scales.clone(),
                nmap: scales,
                offset,
                nested,
                nested_blocksize: 256,
                fused: false,
                lens: [num_blocks, 1, 1, 1],
            }
        }
    }
}

/// Dense `[out, in]` weight in `dtype` (F32, F16 or BF16).
///
/// # Panics
/// For another `dtype` (the kernels write floats the GEMM can consume).
pub fn dequantize<R: CubeRuntime, B: CubeB<R>>(
    w: QWeightPrimitive<B>,
    dtype: DType,
) -> CubeTensor<R> {
    match dtype {
        DType::F32 => dequantize_as::<R, B, f32>(w, dtype),
        DType::F16 => dequantize_as::<R, B, f16>(w, dtype),
        DType::BF16 => dequantize_as::<R, B, bf16>(w, dtype),
        other => panic!("qtune-kernels: cannot dequantize to {other:?} (F32, F16 or BF16 only)"),
    }
}

fn dequantize_as<R: CubeRuntime, B: CubeB<R>, F: Float + CubeElement>(
    w: QWeightPrimitive<B>,
    dtype: DType,
) -> CubeTensor<R> {
    let l = w.layout;
    let numel = l.numel();
    let codes = as_u8(w.codes);
    let map = as_f32(w.code_map);
    let out = empty(&codes, vec![l.out_features, l.in_features], dtype);
    if numel == 0 {
        return out;
    }
    let client = codes.client.clone();
    let four_bit = l.format != QuantFormat::Blockwise8;
    let vectorized = numel % PER_UNIT == 0 && l.blocksize % PER_UNIT == 0;
    let (words_per_unit, fused) = dequant_variant();
    if vectorized && four_bit {
        let words = numel / PER_UNIT;
        let units = words.div_ceil(words_per_unit);
        // Fused: the nested state goes straight to the kernel; otherwise a product pass first.
        let sa = scale_args(w.absmax, l.num_blocks(), fused, &codes);
        // SAFETY: every array length follows from the validated layout.
        unsafe {
            kernels::dequant4_vec_kernel::launch_unchecked::<F, R>(
                &client,
                cube_count(units),
                cube_dim(),
                PER_UNIT,
                array(&codes, words),
                array(&sa.scales, sa.lens[0]),
                array(&sa.ncodes, sa.lens[1]),
                array(&sa.nabs, sa.lens[2]),
                array(&sa.nmap, sa.lens[3]),
                array(&map, 16),
                array(&out, numel),
                words,
                units,
                sa.offset,
                l.blocksize,
                sa.nested,
                sa.fused,
                sa.nested_blocksize,
                words_per_unit,
            );
        }
        return out;
    }
    let (scales, offset, nested) = block_scales(w.absmax, l.num_blocks());
    // SAFETY: every array length below follows from the validated layout.
    unsafe {
        if vectorized {
            let vectors = numel / PER_UNIT;
            kernels::dequant8_vec_kernel::launch_unchecked::<F, R>(
                &client,
                cube_count(vectors),
                cube_dim(),
                PER_UNIT,
                array(&codes, numel / 4),
                array(&scales, l.num_blocks()),
                array(&map, 256),
                array(&out, numel),
                vectors,
                offset,
                l.blocksize,
                nested,
            );
        } else {
            kernels::dequant_scalar_kernel::launch_unchecked::<F, R>(
                &client,
                cube_count(numel),
                cube_dim(),
                array(&codes, l.num_code_bytes()),
                array(&scales, l.num_blocks()),
                array(&map, map_len(l.format)),
                array(&out, numel),
                numel,
                offset,
                l.blocksize,
                nested,
                four_bit,
            );
        }
    }
    out
}

fn map_len(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Blockwise8 => 256,
        QuantFormat::Nf4 | QuantFormat::Fp4 => 16,
    }
}

/// Blockwise quantization of a dense weight on the device: `(codes U8, absmax F32)`, both 1-D.
/// The caller has checked that the values are finite and the block size is supported.
pub fn quantize<R: CubeRuntime>(
    x: CubeTensor<R>,
    format: QuantFormat,
    blocksize: usize,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let x = into_contiguous(x);
    match x.dtype {
        DType::F16 => quantize_as::<R, f16>(x, format, blocksize),
        DType::BF16 => quantize_as::<R, bf16>(x, format, blocksize),
        DType::F32 => quantize_as::<R, f32>(x, format, blocksize),
        _ => quantize_as::<R, f32>(cast(x, DType::F32), format, blocksize),
    }
}

fn quantize_as<R: CubeRuntime, F: Float + CubeElement>(
    x: CubeTensor<R>,
    format: QuantFormat,
    blocksize: usize,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let numel = x.meta.num_elements();
    let num_blocks = numel.div_ceil(blocksize);
    let num_bytes = format.code_bytes(numel);
    let client = x.client.clone();
    let absmax = empty(&x, vec![num_blocks], DType::F32);
    let codes = empty(&x, vec![num_bytes], DType::U8);
    if numel == 0 {
        return (codes, absmax);
    }
    // SAFETY: lengths follow from numel and the block size.
    unsafe {
        kernels::absmax_kernel::launch_unchecked::<F, R>(
            &client,
            cube_count(num_blocks),
            cube_dim(),
            array(&x, numel),
            array(&absmax, num_blocks),
            numel,
            num_blocks,
            blocksize,
        );
    }
    let inv = super::rcp::inv_absmax(&absmax, num_blocks, qtune_quant::Reciprocal::BnbCuda);
    // SAFETY: as above; `inv` holds `num_blocks` f32.
    unsafe {
        match format {
            QuantFormat::Nf4 | QuantFormat::Fp4 => {
                kernels::quant4_kernel::launch_unchecked::<F, R>(
                    &client,
                    cube_count(num_bytes),
                    cube_dim(),
                    array(&x, numel),
                    array(&inv, num_blocks),
                    array(&codes, num_bytes),
                    numel,
                    num_bytes,
                    blocksize,
                    format == QuantFormat::Nf4,
                )
            }
            QuantFormat::Blockwise8 => {
                let map = {
                    let h = client.create_from_slice(f32::as_bytes(&qtune_quant::DYNAMIC_MAP));
                    CubeTensor::new_contiguous(
                        client.clone(),
                        x.device.clone(),
                        Shape::from(vec![256]),
                        h,
                        DType::F32,
                    )
                };
                kernels::quant8_kernel::launch_unchecked::<F, R>(
                    &client,
                    cube_count(numel),
                    cube_dim(),
                    array(&x, numel),
                    array(&inv, num_blocks),
                    array(&map, 256),
                    array(&codes, numel),
                    numel,
                    blocksize,
                )
            }
        }
    }
    (codes, absmax)
}
