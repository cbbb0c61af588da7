//! What a model needs from the device before it is built: a capable GPU ([`check_device`]), and
//! its tensors uploaded.
//!
//! Host → device upload of a checkpoint tensor: one `cuMemcpyHtoDAsync` from the caller's bytes
//! into a fresh buffer of cubecl's pool, on cubecl's stream.
//!
//! Why not `Tensor::from_data`: cubecl 0.10's `ComputeClient::create` copies the bytes into a
//! pinned staging buffer reserved from its pinned pool, then copies that buffer into a fresh
//! `Vec` (`do_create`'s `to_vec`), and the driver stages the pageable `Vec` once more for the
//! DMA: three host copies of every byte, plus a pinned reservation per tensor. Loading a
//! 12.1 GB GPT-J-6B folder spent about 18 s there (BENCHMARKS.md, session 9). Here the driver's
//! staging is the only copy.
//!
//! Ordering and lifetime: the copy is enqueued on the stream cubecl orders the buffer's other
//! uses on (the pool hands out memory in that stream's order). For pageable source memory the
//! CUDA driver returns from `cuMemcpyHtoDAsync` only once the bytes sit in its own staging
//! memory ("API synchronization behavior", CUDA driver API docs), so the caller may free them
//! as soon as this returns.

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::Runtime;

/// A contiguous device tensor of `shape` and `dtype` holding `bytes` (native-endian values).
///
/// # Panics
/// If `bytes` does not hold `shape`'s values of `dtype` (a caller bug: `TensorData` keeps them
/// consistent), or on a CUDA failure (the device is unusable then; Burn's own uploads panic the
/// same way).
pub fn upload(
    bytes: &[u8],
    shape: Shape,
    dtype: DType,
    device: &CudaDevice,
) -> CubeTensor<CudaRuntime> {
    assert_eq!(
        bytes.len(),
        shape.num_elements() * dtype.size(),
        "qtune-kernels: upload of {shape:?} {dtype:?} got {} bytes",
        bytes.len()
    );
    let client = CudaRuntime::client(device);
    let handle = client.empty(bytes.len().max(1));
    if !bytes.is_empty() {
        let (c, h) = (client.clone(), handle.clone());
        client
            .exclusive(move || {
                let binding = c
                    .get_resource(h)
                    .unwrap_or_else(|e| panic!("qtune-kernels: device pointer for upload: {e:?}"));
                let r = binding.resource();
                // SAFETY: `r.ptr` is a live allocation of at least `bytes.len()` bytes (just
                // reserved) and `r.stream` the stream its uses are ordered on; `bytes` is a
                // valid host slice, pageable, so the call returns only after the driver has
                // staged it (module docs) and the slice may be dropped afterwards.
                let status = unsafe {
                    cudarc::driver::sys::cuMemcpyHtoDAsync_v2(
                        r.ptr,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        r.stream,
                    )
                };
                assert!(
                    status == cudarc::driver::sys::CUresult::CUDA_SUCCESS,
                    "qtune-kernels: cuMemcpyHtoDAsync of {} bytes: {status:?}",
                    bytes.len()
                );
                drop(binding);
            })
            .unwrap_or_else(|e| panic!("qtune-kernels: cubecl device thread: {e:?}"));
    }
    CubeTensor::new_contiguous(client, device.clone(), shape, handle, dtype)
}

/// Oldest compute capability qtune's CUDA path is built for (Volta: f16 tensor cores; cuBLASLt
/// and cubecl's kernels). Tested on 9.0 (H100, H200) only.
const MIN_CC: (i32, i32) = (7, 0);
/// bfloat16 arithmetic needs Ampere.
const MIN_CC_BF16: (i32, i32) = (8, 0);

/// [`crate::QBackend::q_check_device`] for CUDA device `index`.
///
/// # Errors
/// [`KernelError::Device`]: no such device, a compute capability below 7.0, or bfloat16 on one
/// below 8.0 (with the float16 alternative named); [`KernelError::Setting`] for a value of
/// `QTUNE_GEMM_EPILOGUES`, `QTUNE_NF4_GEMM` or `QTUNE_FLASH_ATTN` other than 0 or 1, or of `CUBECL_CUDA_MEMORY` the
/// memory pool would refuse (third_party/README.md, patch 2).
pub fn check_device(index: usize, dtype: DType) -> Result<(), crate::KernelError> {
    super::epilogue::epilogues_from_env()?;
    super::nf4_gemm::nf4_gemm_from_env()?;
    super::flash_attn::flash_attn_from_env()?;
    cubecl::cuda::check_memory_setting().map_err(|expected| crate::KernelError::Setting {
        var: cubecl::cuda::MEMORY_ENV,
        value: std::env::var(cubecl::cuda::MEMORY_ENV).unwrap_or_default(),
        expected,
    })?;
    let err = |device: String, reason: String| crate::KernelError::Device { device, reason };
    let ctx = cudarc::driver::CudaContext::new(index).map_err(|e| {
        err(
            format!("CUDA device {index}"),
            format!("cannot be opened: {e:?}"),
        )
    })?;
    let name = ctx.name().unwrap_or_else(|_| "unknown".into());
    let device = format!("CUDA device {index} ({name})");
    let cc = ctx.compute_capability().map_err(|e| {
        err(
            device.clone(),
            format!("compute capability unreadable: {e:?}"),
        )
    })?;
    if cc < MIN_CC {
        return Err(err(
            device,
            format!(
                "compute capability {}.{} is below the {}.{} qtune's CUDA kernels need (Volta or newer); train on the CPU build instead",
                cc.0, cc.1, MIN_CC.0, MIN_CC.1
            ),
        ));
    }
    if dtype == DType::BF16 && cc < MIN_CC_BF16 {
        return Err(err(
            device,
            format!(
                "bfloat16 needs compute capability {}.{} (Ampere) or newer, this GPU has {}.{}: set [model] torch_dtype = \"float16\" (dynamic loss scaling is on by default) or --dtype float16",
                MIN_CC_BF16.0, MIN_CC_BF16.1, cc.0, cc.1
            ),
        ));
    }
    Ok(())
}
