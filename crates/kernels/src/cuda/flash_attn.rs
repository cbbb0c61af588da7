//! The attention core's output in one kernel (FlashAttention's forward: scores, mask, online
//! softmax and the product with `v`, tile by tile in registers and shared memory), for the
//! forward passes that keep no probabilities: the prefill, scoring, evaluation. The unfused path
//! (`attention.rs`: a score GEMM writing f32 `[B, H, T, L]`, the softmax kernel, the second GEMM)
//! moves ~48 MB per GPT-J-6B block at 512 rows and took 0.048 ms of each block's prefill
//! (BENCHMARKS.md, session 27: 1.34 of the prefill's 17.76 ms).
//!
//! The kernels are Triton's (`ptx/flash_attn.py aot` wrote them: PTX for sm_90a, wgmma, per head
//! dim 64, 128 and 256, with and without a mask, three tile configs each); `triton.rs` loads and
//! launches them.
//!
//! Numerics: the contract of `QBackend::q_attention`'s output: token-major q, k, v, query head
//! `h` reading kv head `h / (H/H_kv)`, scores summed in f32 and multiplied by `1/div`, masked
//! scores set to `f32::MIN` (a fully masked row comes out uniform; keys past `L` never count).
//! With a mask, each block of query rows first scans it and runs only the key tiles between its
//! rows' first and last unmasked keys (causal: the tiles up to the diagonal, half of them at the
//! prefill; left padding: none of the padded tiles); the skipped keys' weights would be exactly 0,
//! so this changes no bit, and a block with a fully masked row keeps every tile.
//! The softmax is online, so its probabilities enter the second product in bf16 before their
//! normalisation (the unfused path rounds them after it): the two agree to bf16's rounding, not
//! bit for bit. The GPU check compares it with the unfused path (`bench gpu-check --only
//! flash_attn`); `ptx/flash_attn.py --check` runs the same logic under Triton's interpreter.
//!
//! Where it applies (else the unfused path, `None`): an sm_90 device, bf16 q, k, v with a head
//! dim of 64, 128 or 256, at least 2 query rows, a `[B, 1, T, L]` u8 mask or none, offsets
//! within i32, 16-byte aligned buffers, and the switch on.
//!
//! **Off by default: not yet run on a GPU.** Session 29 built it with no device. Turn it on with
//! `QTUNE_FLASH_ATTN=1`; `bench gpu-check --only flash_attn` checks it and `bench dequant
//! --prefill` times it beside the unfused attention (`xtask/device/session29_a.sh` runs both and
//! the whole prefill). Only after that passes may the default change.

use burn::tensor::DType;
use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor};
use cubecl::cuda::CudaRuntime;

use super::launch::empty;
use super::triton::{aligned, function, launch, Kernel, Switch};

/// `1` turns the fused attention on; `0` (the default until it has run on a GPU) leaves the
/// unfused path everywhere.
pub const FLASH_ATTN_ENV: &str = "QTUNE_FLASH_ATTN";

include!("ptx/flash_kernels.rs");

/// Configs shipped per head dim (`ptx/flash_kernels.rs`, consecutive, config 0 first).
const CONFIGS: usize = 3;

/// Parameters of every entry: q, k, v, mask, o, `T`, `L`, `H`, `H_kv`, `1/div`, then Triton's
/// two scratch pointers.
#[cfg(test)]
const PARAMS: usize = 12;

static SWITCH: Switch = Switch::new(
    FLASH_ATTN_ENV,
    "score GEMM, softmax kernel, GEMM",
    "one fused attention kernel where no probabilities are kept",
);

/// [`FLASH_ATTN_ENV`]'s setting, read once (unset: off).
///
/// # Errors
/// [`crate::KernelError::Setting`] for a value other than `0` or `1`.
pub(crate) fn flash_attn_from_env() -> Result<bool, crate::KernelError> {
    SWITCH.setting()
}

/// How many fused attention kernels this process has enqueued.
pub fn flash_attn_launches() -> u64 {
    SWITCH.launches()
}

/// Turns the fused attention on or off whatever [`FLASH_ATTN_ENV`] says (`None`: as it says).
pub fn set_flash_attn(on: Option<bool>) {
    SWITCH.set(on);
}

/// How many configs ship per head dim: [`set_flash_attn_config`] takes `0..` this.
pub fn flash_attn_configs() -> usize {
    CONFIGS
}

/// Picks config `c` (of every head dim), for timing them.
///
/// # Panics
/// For `c ≥` [`flash_attn_configs`].
pub fn set_flash_attn_config(c: usize) {
    SWITCH.set_config(c, CONFIGS);
}

/// The config in use.
pub fn flash_attn_config() -> usize {
    SWITCH.config()
}

/// Kernel `config` for head dim `hd`, with or without a mask.
fn kernel(hd: usize, config: usize, masked: bool) -> Option<&'static Kernel> {
    FLASH_KERNELS
        .iter()
        .filter(|(d, _)| *d == hd)
        .nth(config)
        .map(|(_, k)| &k[usize::from(masked)])
}

type T = CubeTensor<CudaRuntime>;

/// `o [B, T, H, hd]` of token-major `q [B, T, H, hd]`, `k, v [B, L, H_kv, hd]` and `mask [B, 1,
/// T, L]` (u8, non-zero = masked), or `None` where the fused kernel does not apply (module
/// docs). With the switch on, shapes that disagree are refused as the unfused path refuses them
/// (`attention.rs`'s `dims`).
pub(crate) fn flash_attention(q: &T, k: &T, v: &T, mask: Option<&T>, div: f32) -> Option<T> {
    if !SWITCH.enabled() || q.dtype != DType::BF16 {
        return None;
    }
    let [b, t, l, h, h_kv, hd] = super::attention::dims(q, k, v);
    let fits = |n: usize| i32::try_from(n).is_ok();
    let applies = t >= 2
        && l >= 1
        && fits(b * t * h * hd)
        && fits(b * l * h_kv * hd)
        && fits(b * t * l)
        && u16::try_from(b * h).is_ok()
        && mask.is_none_or(|m| m.meta.shape().as_slice() == [b, 1, t, l] && m.dtype.size() == 1);
    if !applies {
        return None;
    }
    let kern = kernel(hd, SWITCH.config(), mask.is_some())?;
    let index = q.device.index;
    let loaded = function(index, kern, "the fused attention")?;
    let (q, k, v) = (
        into_contiguous(q.clone()),
        into_contiguous(k.clone()),
        into_contiguous(v.clone()),
    );
    let mask = mask.map(|m| into_contiguous(m.clone()));
    let o = empty(&q, vec![b, t, h, hd], DType::BF16);
    let tensors = [&q, &k, &v, mask.as_ref().unwrap_or(&o), &o];
    if !tensors.iter().all(|t| aligned(t)) {
        return None;
    }
    let scalars = vec![
        t as u32,
        l as u32,
        h as u32,
        h_kv as u32,
        (1.0 / div).to_bits(),
    ];
    let grid = [t.div_ceil(kern.tile[0]) as u32, (b * h) as u32, 1];
    // SAFETY: the parameters follow the entry (12, the unit test checks, in
    // `ptx/flash_attn.py`'s order); q, o hold `b·t·h·hd` bf16, k, v `b·l·h_kv·hd`, the mask
    // `b·t·l` bytes (read only by the masked kernel); the grid covers `⌈t / BM⌉` row tiles of
    // each (batch row, head), rows past `t` and keys past `l` masked in the kernel, every offset
    // within i32 (checked above).
    unsafe {
        launch(index, (kern, loaded), &SWITCH, tensors, scalars, grid);
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped PTX matches the table that launches it (as `nf4_gemm.rs`'s test): Hopper
    /// target and CUDA 12.8's ISA, the entry and its 12 parameters, the block size, shared memory
    /// within an H100's 227 KiB, each head dim with [`CONFIGS`] configs whose tile's third entry
    /// is the head dim.
    #[test]
    fn every_shipped_kernel_matches_its_launch_table() {
        for hd in [64, 128, 256] {
            assert_eq!(
                FLASH_KERNELS.iter().filter(|(d, _)| *d == hd).count(),
                CONFIGS,
                "head dim {hd}"
            );
        }
        for (hd, kernels) in &FLASH_KERNELS {
            for (m, k) in kernels.iter().enumerate() {
                let what = format!("head dim {hd} masked {m} {:?}", k.tile);
                assert!(k.ptx.contains("\n.target sm_90a"), "{what}: target");
                assert!(k.ptx.contains("\n.version 8.7"), "{what}: PTX ISA");
                assert_eq!(
                    super::super::triton::entry_params(k.ptx, k.name),
                    Some(PARAMS),
                    "{what}: parameters"
                );
                assert!(
                    k.ptx.contains(&format!(".reqntid {}", k.threads())),
                    "{what}: threads"
                );
                assert!(k.shared <= 227 * 1024, "{what}: shared memory {}", k.shared);
                assert!(k.tile[2] == *hd && k.tile[0] > 0 && k.tile[1] > 0, "{what}");
            }
        }
        assert!(kernel(256, 0, true).is_some() && kernel(96, 0, false).is_none());
    }
}
