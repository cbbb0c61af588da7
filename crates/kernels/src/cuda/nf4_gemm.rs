//! A GEMM that reads 4-bit codes (NF4 or FP4, double-quantized absmax) straight from the
//! quantized weight, for a few hundred rows (the prefill, batched generation): `y = x · Wᵀ`
//! with `W` dequantized tile by tile in registers, never written out. Against dequantize +
//! cuBLAS it saves the dense weight's write and read back (31 % of GPT-J-6B's NF4 prefill,
//! BENCHMARKS.md session 27).
//!
//! The kernels are Triton's (`ptx/nf4_gemm.py aot` wrote them: PTX for sm_90a, one per tile
//! config and epilogue; `ptx/README.md` says with what): a Hopper wgmma GEMM with a pipelined
//! mainloop is what cubecl 0.10 cannot express. They load as a CUDA module on first use and launch on
//! cubecl's stream from its device thread, as cuBLAS does (`cublas.rs`).
//!
//! Numerics: each weight value is the dequant kernel's, bit for bit (`ftz(map[code] ·
//! (ftz(nested_map[c] · nested_absmax) + offset))` rounded once to bf16, no FMA contraction),
//! the products summed in f32 by the tensor cores in another order than cuBLAS's, the epilogue
//! (bias, `gelu_new`, the addend) on the f32 sum before its one rounding. The GPU check compares
//! it with dequantize + cuBLAS (`bench gpu-check --only nf4_gemm`), itself checked against the
//! CPU reference by the `linear` and `mlp` groups.
//!
//! Where it applies (else the caller dequantizes and calls cuBLAS, `None`): an sm_90 device,
//! bf16 activations of 2..=[`MAX_ROWS`] rows, 4-bit codes with absmax blocks of 64 nested in
//! blocks of 256, `in_features` a multiple of the tile's depth and `out_features` of its width,
//! 16-byte aligned buffers, and the switch on.
//!
//! **Off by default: not yet run on a GPU.** Session 28 built it, checked the kernel's logic in
//! Triton's interpreter on the CPU and its PTX with `ptxas`, and then had no device. Turn it on
//! with `QTUNE_NF4_GEMM=1`; `bench gpu-check --only nf4_gemm` checks it against dequantize +
//! cuBLAS and `bench dequant --prefill` times every config (`xtask/device/session29_a.sh` runs
//! both and the whole prefill). Only after that passes may the default change.

use burn::tensor::DType;
use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor};
use cubecl::cuda::CudaRuntime;
use qtune_quant::QuantFormat;

use super::launch::{as_f32, as_u8, empty, CubeB};
use super::triton::{aligned, function, launch, Kernel, Switch};
use crate::{AbsmaxPrimitive, QWeightPrimitive};

/// `1` turns the fused GEMM on; `0` (the default until it has run on a GPU) leaves dequantize +
/// cuBLAS everywhere.
pub const NF4_GEMM_ENV: &str = "QTUNE_NF4_GEMM";

/// Most rows that take the fused GEMM. Not measured yet: with more rows the dense weight's cost
/// spreads over more of them while cuBLAS's GEMM stays the faster GEMM, so somewhere the
/// dequantize-then-cuBLAS path wins again (at 4096 rows, training's, the dequantization is only
/// 10 % of the base linears' time, session 27); `bench dequant --prefill --tokens N` finds where.
pub const MAX_ROWS: usize = 1024;

/// What the kernel does to the f32 sum `acc = x · Wᵀ` before its one rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Epi {
    /// `y = acc`.
    Plain,
    /// `y = gelu_new(acc + bias)` (GPT-J's `fc_in`).
    BiasGelu,
    /// `y = acc + bias + add` (GPT-J's `fc_out` onto the residual sum).
    BiasAdd,
}

include!("ptx/kernels.rs");

/// Parameters of every kernel's entry: 9 pointers, `M`, `N`, `K`, `offset`, then Triton's two
/// scratch pointers (null: the kernels use none, `nf4_gemm.py aot` asserts it). The unit test
/// below checks every shipped entry against it.
#[cfg(test)]
const PARAMS: usize = 15;

/// The switch, and the config in use: 0 unless a bench picks another (not chosen by
/// measurement yet: 128 × 128 tiles give one wave of 128 CTAs on a 4096-wide output at 512
/// rows).
static SWITCH: Switch = Switch::new(
    NF4_GEMM_ENV,
    "dequantize + cuBLAS",
    "the fused NF4 GEMM up to 1024 rows",
);

/// [`NF4_GEMM_ENV`]'s setting, read once (unset: off).
///
/// # Errors
/// [`crate::KernelError::Setting`] for a value other than `0` or `1`.
pub(crate) fn nf4_gemm_from_env() -> Result<bool, crate::KernelError> {
    SWITCH.setting()
}

/// How many fused NF4 GEMMs this process has enqueued.
pub fn nf4_gemm_launches() -> u64 {
    SWITCH.launches()
}

/// Turns the fused GEMM on or off for this process whatever [`NF4_GEMM_ENV`] says (`None`: as it
/// says), for A/B timings and checks in one process.
pub fn set_nf4_gemm(on: Option<bool>) {
    SWITCH.set(on);
}

/// How many configs ship (`ptx/kernels.rs`): [`set_nf4_gemm_config`] takes `0..` this.
pub fn nf4_gemm_configs() -> usize {
    KERNELS.len()
}

/// Pairs `(c, twin)` of shipped configs with the same tiles that make the weight values in
/// different ways (`DQ` in `ptx/nf4_gemm.py`: a per-block table picked by `tl.gather`, or one
/// `mul.rn.ftz.f32`, against the map load, product and flush of the twin): each pair must give
/// the same bits (`bench gpu-check --only nf4_gemm` checks).
pub fn nf4_gemm_twins() -> &'static [(usize, usize)] {
    &TWINS
}

/// Picks config `c` of the shipped ones, for timing them.
///
/// # Panics
/// For `c ≥` [`nf4_gemm_configs`] (callers check a user's value against it first).
pub fn set_nf4_gemm_config(c: usize) {
    SWITCH.set_config(c, KERNELS.len());
}

/// The config in use (an index into `ptx/kernels.rs`).
pub fn nf4_gemm_config() -> usize {
    SWITCH.config()
}

/// `x [m, in] · dequant(w)ᵀ → [m, out]` with `epi` (`bias [out]`, `add [m, out]` in `x`'s
/// dtype where it needs them), or `None` where the fused GEMM does not apply (module docs).
pub(crate) fn nf4_linear<B: CubeB<CudaRuntime>>(
    x: &CubeTensor<CudaRuntime>,
    w: &QWeightPrimitive<B>,
    epi: Epi,
    bias: Option<&CubeTensor<CudaRuntime>>,
    add: Option<&CubeTensor<CudaRuntime>>,
) -> Option<CubeTensor<CudaRuntime>> {
    let l = w.layout;
    let k = &KERNELS[SWITCH.config()][epi as usize];
    let [bm, bn, bk] = k.tile;
    let shape = x.meta.shape();
    let m = shape.first().copied().unwrap_or(0);
    let AbsmaxPrimitive::Nested(nested) = &w.absmax else {
        return None;
    };
    let applies = SWITCH.enabled()
        && x.dtype == DType::BF16
        && shape.len() == 2
        && shape[1] == l.in_features
        && (2..=MAX_ROWS).contains(&m)
        && matches!(l.format, QuantFormat::Nf4 | QuantFormat::Fp4)
        && l.blocksize == 64
        && nested.blocksize == 256
        && l.in_features % bk == 0
        && l.out_features % bn == 0
        && i32::try_from(l.numel()).is_ok()
        && i32::try_from(m * l.in_features.max(l.out_features)).is_ok()
        && bias.is_some() == (epi != Epi::Plain)
        && add.is_some() == (epi == Epi::BiasAdd)
        && bias.is_none_or(|b| b.dtype == x.dtype && b.meta.num_elements() == l.out_features)
        && add
            .is_none_or(|a| a.dtype == x.dtype && a.meta.shape().as_slice() == [m, l.out_features]);
    if !applies {
        return None;
    }
    let index = x.device.index;
    let loaded = function(index, k, "the fused NF4 GEMM")?;
    let x = into_contiguous(x.clone());
    let bias = bias.map(|b| into_contiguous(b.clone()));
    let add = add.map(|a| into_contiguous(a.clone()));
    let codes = as_u8(w.codes.clone());
    let ncodes = as_u8(nested.codes.clone());
    let nabs = as_f32(nested.absmax.clone());
    let nmap = as_f32(nested.map.clone());
    let map = as_f32(w.code_map.clone());
    let y = empty(&x, vec![m, l.out_features], x.dtype);
    let tensors = [
        &x,
        &codes,
        &ncodes,
        &nabs,
        &nmap,
        &map,
        bias.as_ref().unwrap_or(&y),
        add.as_ref().unwrap_or(&y),
        &y,
    ];
    if !tensors.iter().all(|t| aligned(t)) {
        return None;
    }
    let dims = [m, l.out_features, l.in_features].map(|v| v as i32 as u32);
    let scalars = vec![dims[0], dims[1], dims[2], nested.offset.to_bits()];
    let blocks = (l.out_features / bn) * m.div_ceil(bm);
    // SAFETY: the parameters follow the kernel's entry (15, the unit test checks, in
    // `ptx/nf4_gemm.py`'s order); the buffers hold the shapes checked above (codes: out·in/2
    // bytes, one nested code per 64 values, one nested absmax per 256 codes, 256- and 16-entry
    // maps); the grid covers `out / bn` column tiles times `⌈m / bm⌉` row tiles, rows past `m`
    // masked in the kernel.
    unsafe {
        launch(
            index,
            (k, loaded),
            &SWITCH,
            tensors,
            scalars,
            [blocks as u32, 1, 1],
        );
    }
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped PTX matches the table that launches it: Hopper target, the ISA a CUDA 12.8
    /// driver reads, the entry's name and parameter count, the block size Triton fixed
    /// (`.reqntid`), shared memory within an H100's 227 KiB, and tiles the checks in
    /// `nf4_linear` rely on (depth a multiple of the absmax block).
    #[test]
    fn every_shipped_kernel_matches_its_launch_table() {
        for &(c, twin) in nf4_gemm_twins() {
            assert!(
                c != twin && c < KERNELS.len() && twin < KERNELS.len(),
                "twins {c}, {twin}"
            );
            for (a, b) in KERNELS[c].iter().zip(&KERNELS[twin]) {
                assert_eq!((a.tile, a.warps), (b.tile, b.warps), "twins {c}, {twin}");
            }
        }
        for (c, kernels) in KERNELS.iter().enumerate() {
            for (e, k) in kernels.iter().enumerate() {
                let what = format!("config {c} epilogue {e}");
                assert!(k.ptx.contains("\n.target sm_90a"), "{what}: target");
                assert!(k.ptx.contains("\n.version 8.7"), "{what}: PTX ISA");
                assert!(
                    k.ptx.contains(&format!(".entry {}(", k.name)),
                    "{what}: entry {}",
                    k.name
                );
                assert_eq!(
                    super::super::triton::entry_params(k.ptx, k.name),
                    Some(PARAMS),
                    "{what}: parameters"
                );
                assert!(
                    k.ptx.contains(&format!(".reqntid {}", k.threads())),
                    "{what}: {} threads",
                    32 * k.warps
                );
                assert!(k.shared <= 227 * 1024, "{what}: shared memory {}", k.shared);
                let [bm, bn, bk] = k.tile;
                assert!(
                    bk % 64 == 0 && bn % 16 == 0 && bm > 0,
                    "{what}: tile {:?}",
                    k.tile
                );
            }
        }
    }
}
