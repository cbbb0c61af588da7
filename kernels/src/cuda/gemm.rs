//! cuBLAS GEMMs on Burn's own CUDA buffers (cudarc 0.19.10, the version cubecl-cuda uses, so
//! both share the device's primary context and the raw pointers are valid for cuBLAS).
//!
//! Ordering: cubecl queues work on its own streams and exposes no stream handle, so every call
//! here is `Backend::sync` (inputs written) → GEMM on our stream → `stream.synchronize()` (output
//! written) → return. About 10 µs per call on an H100 (shared/notes/gpu.md); worth it: cuBLAS
//! reaches ~770 TFLOP/s in bf16 where Burn 0.21's own matmul reaches ~270.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{result as blas, sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaStream};

use super::launch::{empty, CubeB};

/// One cuBLAS handle and stream per device, created on first use.
struct DeviceBlas {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

type BlasMap = HashMap<usize, Arc<Mutex<DeviceBlas>>>;

fn device_blas(index: usize) -> Arc<Mutex<DeviceBlas>> {
    static MAP: OnceLock<Mutex<BlasMap>> = OnceLock::new();
    let mut map = MAP
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(index)
        .or_insert_with(|| {
            let ctx = CudaContext::new(index).unwrap_or_else(|e| {
                panic!("qtune-kernels: CUDA context for device {index}: {e:?}")
            });
            let stream = ctx
                .new_stream()
                .unwrap_or_else(|e| panic!("qtune-kernels: CUDA stream on device {index}: {e:?}"));
            let blas = CudaBlas::new(stream.clone()).unwrap_or_else(|e| {
                panic!("qtune-kernels: cuBLAS handle on device {index}: {e:?}")
            });
            Arc::new(Mutex::new(DeviceBlas { stream, blas }))
        })
        .clone()
}

fn cuda_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => panic!("qtune-kernels: cuBLAS GEMM supports F32, F16, BF16, not {other:?}"),
    }
}

/// Which product: `y = a·Wᵀ` (forward) or `dx = a·W` (input gradient); `W` is row-major `[n, k]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Product {
    /// `a[m, k] · W[n, k]ᵀ → [m, n]`.
    ATransB,
    /// `a[m, n] · W[n, k] → [m, k]`.
    AB,
}

/// Row-major GEMM of `a [m, ·]` with a weight `w [n, k]`, in `a`'s dtype (fp32 accumulation):
/// [`bmm`] with a batch of one. `a` and `w` must have the same dtype.
///
/// # Panics
/// On dtype or shape mismatch, an unsupported dtype, or a CUDA/cuBLAS failure (Burn ops cannot
/// return errors; a failure here means the device is unusable).
pub fn gemm<B>(
    a: CubeTensor<CudaRuntime>,
    w: &CubeTensor<CudaRuntime>,
    product: Product,
) -> CubeTensor<CudaRuntime>
where
    B: CubeB<CudaRuntime> + burn::tensor::backend::Backend<Device = cubecl::cuda::CudaDevice>,
{
    use burn::tensor::Shape;
    let (a_shape, w_shape) = (a.meta.shape().to_vec(), w.meta.shape().to_vec());
    let (m, inner) = (a_shape[0], a_shape[1]);
    let (n, k) = (w_shape[0], w_shape[1]);
    let out_cols = match product {
        Product::ATransB => {
            assert_eq!(
                inner, k,
                "qtune-kernels: x has {inner} features, W has {k} input features"
            );
            n
        }
        Product::AB => {
            assert_eq!(
                inner, n,
                "qtune-kernels: dy has {inner} features, W has {n} outputs"
            );
            k
        }
    };
    let dtype = a.dtype;
    let a3 = B::float_reshape(a, Shape::new([1, m, inner]));
    let w3 = B::float_reshape(w.clone(), Shape::new([1, n, k]));
    let y = bmm::<B>(a3, w3, false, product == Product::ATransB, dtype);
    B::float_reshape(y, Shape::new([m, out_cols]))
}

/// Batched row-major matmul `c[i] = op(a[i])·op(b[i])` (one `cublasGemmStridedBatchedEx`):
/// `a`, `b` are 3-D `[batch, ·, ·]` of one dtype, `op` transposes the last two dims when `ta`/`tb`;
/// fp32 accumulation, output in `out_dtype` (the inputs' dtype, or F32 for bf16/f16 inputs).
///
/// # Panics
/// On a shape or dtype mismatch (a model wiring bug) or a CUDA/cuBLAS failure.
pub fn bmm<B>(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    ta: bool,
    tb: bool,
    out_dtype: DType,
) -> CubeTensor<CudaRuntime>
where
    B: CubeB<CudaRuntime> + burn::tensor::backend::Backend<Device = cubecl::cuda::CudaDevice>,
{
    assert_eq!(
        a.dtype, b.dtype,
        "qtune-kernels: matmul operands must share a dtype"
    );
    let a = burn_cubecl::kernel::into_contiguous(a);
    let b = burn_cubecl::kernel::into_contiguous(b);
    let (sa, sb) = (a.meta.shape().to_vec(), b.meta.shape().to_vec());
    assert!(
        sa.len() == 3 && sb.len() == 3 && sa[0] == sb[0],
        "qtune-kernels: matmul needs [batch, r, c] operands of one batch, got {sa:?} and {sb:?}"
    );
    let batch = sa[0];
    // Row-major stored shapes; op() applied.
    let (m, k) = if ta { (sa[2], sa[1]) } else { (sa[1], sa[2]) };
    let (kb, n) = if tb { (sb[2], sb[1]) } else { (sb[1], sb[2]) };
    assert_eq!(
        k,
        kb,
        "qtune-kernels: matmul inner dims differ: {sa:?}{} · {sb:?}{}",
        if ta { "ᵀ" } else { "" },
        if tb { "ᵀ" } else { "" }
    );
    let out = empty(&a, vec![batch, m, n], out_dtype);
    if batch == 0 || m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        return burn_cubecl::kernel::into_contiguous(
            <B as burn::tensor::ops::FloatTensorOps<B>>::float_zeros(
                vec![batch, m, n].into(),
                &a.device,
                out_dtype.into(),
            ),
        );
    }
    let (ty, out_ty) = (cuda_type(a.dtype), cuda_type(out_dtype));
    B::sync(&a.device).unwrap_or_else(|e| panic!("qtune-kernels: device sync before GEMM: {e:?}"));
    let ptr = |t: &CubeTensor<CudaRuntime>| {
        t.client
            .get_resource(t.handle.clone())
            .unwrap_or_else(|e| panic!("qtune-kernels: device pointer for GEMM: {e:?}"))
    };
    let (ra, rb, ro) = (ptr(&a), ptr(&b), ptr(&out));
    let (pa, pb, po) = (ra.resource().ptr, rb.resource().ptr, ro.resource().ptr);
    let dev = device_blas(a.device.index);
    let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
    let (alpha, beta) = (1.0f32, 0.0f32);
    let op = |t: bool| {
        if t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    // Column-major view: cᵀ[n, m] = op(b)ᵀ · op(a)ᵀ, each row-major buffer read as its
    // transpose with ld = its stored row length.
    let i = |v: usize| i32::try_from(v).expect("qtune-kernels: GEMM dimension exceeds i32");
    // SAFETY: live contiguous buffers of the stated shapes (resources held until the stream
    // synchronizes); all Burn writes finished at the sync above.
    unsafe {
        blas::gemm_strided_batched_ex(
            *dev.blas.handle(),
            op(tb),
            op(ta),
            i(n),
            i(m),
            i(k),
            &alpha as *const f32 as *const _,
            pb as *const _,
            ty,
            i(sb[2]),
            (sb[1] * sb[2]) as i64,
            pa as *const _,
            ty,
            i(sa[2]),
            (sa[1] * sa[2]) as i64,
            &beta as *const f32 as *const _,
            po as *mut _,
            out_ty,
            i(n),
            (m * n) as i64,
            i(batch),
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .unwrap_or_else(|e| panic!("qtune-kernels: cublasGemmStridedBatchedEx: {e:?}"));
    }
    dev.stream
        .synchronize()
        .unwrap_or_else(|e| panic!("qtune-kernels: stream sync after GEMM: {e:?}"));
    drop((ra, rb, ro));
    out
}
