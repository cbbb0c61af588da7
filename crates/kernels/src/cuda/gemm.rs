//! cuBLAS GEMMs on Burn's own CUDA buffers (cudarc 0.19.10, the version cubecl-cuda uses, so
//! both share the device's primary context and the raw pointers are valid for cuBLAS).
//!
//! Ordering: every GEMM is enqueued on cubecl's own stream for the calling thread (our patched
//! cubecl-cuda reports it with each resource, third_party/README.md), so it runs after the
//! kernels that wrote its inputs and before those that read its output, with no host sync. The
//! pointer look-ups and the enqueue run on cubecl's device thread, handed over without waiting
//! (its FIFO task queue keeps the order; [`strided_gemm`]).

use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

pub(super) use super::cublas::{device_handle, lookup, stop_on_device_failure, Operand, Server};
pub(crate) use super::cublas::{pointer_batched_gemm, strided_gemm, strided_gemm_epilogue};
use super::gemv::dense_gemv;
use super::launch::{empty, CubeB};

/// A backend on Burn's CUDA buffers whose device is a CUDA device: what the GEMMs here run on
/// (the library's CUDA backend, and its autodiff-inner one).
pub trait CudaB:
    CubeB<CudaRuntime> + burn::tensor::backend::Backend<Device = cubecl::cuda::CudaDevice>
{
}
impl<B> CudaB for B where
    B: CubeB<CudaRuntime> + burn::tensor::backend::Backend<Device = cubecl::cuda::CudaDevice>
{
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
pub fn gemm<B: CudaB>(
    a: CubeTensor<CudaRuntime>,
    w: &CubeTensor<CudaRuntime>,
    product: Product,
) -> CubeTensor<CudaRuntime> {
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
    let tb = product == Product::ATransB;
    let y = bmm::<B>(a3, w3, false, tb, dtype, OneRow::Gemv);
    B::float_reshape(y, Shape::new([m, out_cols]))
}

/// Which kernel computes a product of one row `x [1, k] · w[n, k]ᵀ` (LoRA factors, the LM head
/// at decode): the GEMV kernel, what the library always uses, or cuBLAS, what the GPU check and
/// the bench compare it with ([`bmm`], [`gemm_acc`], [`linear_t_via`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneRow {
    Gemv,
    Cublas,
}

/// Batched row-major matmul `c[i] = op(a[i])·op(b[i])` (one `cublasGemmStridedBatchedEx`):
/// `a`, `b` are 3-D `[batch, ·, ·]` of one dtype, `op` transposes the last two dims when `ta`/`tb`;
/// fp32 accumulation, output in `out_dtype` (the inputs' dtype, or F32 for bf16/f16 inputs).
/// A product of one row is computed as `one_row` says (the library passes [`OneRow::Gemv`]).
///
/// # Panics
/// On a shape or dtype mismatch (a model wiring bug) or a CUDA/cuBLAS failure.
pub fn bmm<B: CudaB>(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    ta: bool,
    tb: bool,
    out_dtype: DType,
    one_row: OneRow,
) -> CubeTensor<CudaRuntime> {
    bmm_scaled::<B>(a, b, crate::GemmOptions::new(ta, tb, out_dtype), one_row)
}

/// [`bmm`] of `opts.alpha·op(a)·op(b)`: α is the GEMM's own (applied to the f32 accumulator),
/// so a scaled product costs no extra pass. A product of one row takes the GEMV kernel only
/// unscaled.
pub fn bmm_scaled<B: CudaB>(
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    opts: crate::GemmOptions,
    one_row: OneRow,
) -> CubeTensor<CudaRuntime> {
    let (a, b) = (into_contiguous(a), into_contiguous(b));
    let g = Gemm {
        alpha: opts.alpha,
        ..Gemm::batched(&a, &b, opts.ta, opts.tb)
    };
    let out = empty(&a, vec![g.batch, g.m, g.n], opts.out);
    if g.batch == 0 || g.m == 0 || g.n == 0 {
        return out;
    }
    if g.k == 0 {
        return burn_cubecl::kernel::into_contiguous(
            <B as burn::tensor::ops::FloatTensorOps<B>>::float_zeros(
                vec![g.batch, g.m, g.n].into(),
                &a.device,
                opts.out.into(),
            ),
        );
    }
    let one_row = if opts.alpha == 1.0 {
        one_row
    } else {
        OneRow::Cublas
    };
    if !single_row_gemv(&a, &b, &out, &g, None, one_row) {
        dense_gemm(&a, &b, &out, g);
    }
    out
}

/// `c + alpha·op(a)·op(b)` (3-D operands as [`bmm`], `c` `[batch, m, n]` in the inputs' dtype):
/// one GEMM with β = 1 into `c`'s own buffer when nothing else holds it (the LoRA case: `c` is
/// the fresh base output), else a GEMM, a scale and an add.
///
/// A product of one row is computed as `one_row` says (the library passes [`OneRow::Gemv`]).
///
/// # Panics
/// On a shape or dtype mismatch (a model wiring bug) or a CUDA/cuBLAS failure.
pub fn gemm_acc<B: CudaB>(
    c: CubeTensor<CudaRuntime>,
    a: CubeTensor<CudaRuntime>,
    b: CubeTensor<CudaRuntime>,
    ta: bool,
    tb: bool,
    alpha: f32,
    one_row: OneRow,
) -> CubeTensor<CudaRuntime> {
    let (a, b) = (into_contiguous(a), into_contiguous(b));
    // Dense row-major (a pitched tensor, e.g. a Burn kernel's output with unaligned rows, is
    // copied densely here), then written in place only if nothing else holds the buffer.
    // Otherwise the unfused sum: `CubeTensor::copy` would allocate a *pitched* buffer, which
    // the GEMM (ld = n) would misread.
    let c = into_contiguous(c);
    if !(c.can_mut() && c.is_contiguous_buffer()) {
        let opts = crate::GemmOptions::new(ta, tb, c.dtype).scaled(alpha);
        let ab = bmm_scaled::<B>(a, b, opts, one_row);
        return <B as burn::tensor::ops::FloatTensorOps<B>>::float_add(c, ab);
    }
    let g = Gemm {
        alpha,
        beta: 1.0,
        ..Gemm::batched(&a, &b, ta, tb)
    };
    let sc = c.meta.shape().to_vec();
    assert!(
        sc == vec![g.batch, g.m, g.n],
        "qtune-kernels: matmul-accumulate: c is {sc:?}, the product [{}, {}, {}]",
        g.batch,
        g.m,
        g.n
    );
    assert_eq!(
        c.dtype, a.dtype,
        "qtune-kernels: matmul-accumulate needs c in the inputs' dtype"
    );
    if g.k == 0 {
        return c;
    }
    if !single_row_gemv(&a, &b, &c, &g, Some(alpha), one_row) {
        dense_gemm(&a, &b, &c, g);
    }
    c
}

/// `c = a·bᵀ` (or `c += alpha·a·bᵀ`) for one row `a [1, 1, k]` and `b [1, n, k]` by the GEMV
/// kernel ([`dense_gemv`], which also checks the batch of one and the dtypes) unless `one_row`
/// asks for cuBLAS; `false` when it does not apply and nothing was launched.
fn single_row_gemv(
    a: &CubeTensor<CudaRuntime>,
    b: &CubeTensor<CudaRuntime>,
    c: &CubeTensor<CudaRuntime>,
    g: &Gemm,
    alpha: Option<f32>,
    one_row: OneRow,
) -> bool {
    one_row == OneRow::Gemv && g.m == 1 && !g.ta && g.tb && dense_gemv(a, b, c, alpha).is_some()
}

/// [`crate::linear_t`] of one row `x [1, k]` by `w [n, k]` (inner backend, no autodiff), its
/// product computed as `one_row` says: the GPU check's and the bench's GEMV-vs-cuBLAS pair.
pub fn linear_t_via<B: CudaB>(x: Tensor<B, 2>, w: Tensor<B, 2>, one_row: OneRow) -> Tensor<B, 2> {
    let ([m, k], [n, _]) = (x.dims(), w.dims());
    let dtype = x.dtype();
    let y = bmm::<B>(
        prim(x.reshape([1, m, k])),
        prim(w.reshape([1, n, k])),
        false,
        true,
        dtype,
        one_row,
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(y)).reshape([m, n])
}

/// [`crate::linear_t_acc`] (`y + alpha·x·wᵀ`) as [`linear_t_via`].
pub fn linear_t_acc_via<B: CudaB>(
    y: Tensor<B, 2>,
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    alpha: f32,
    one_row: OneRow,
) -> Tensor<B, 2> {
    let ([m, k], [n, _]) = (x.dims(), w.dims());
    let c = gemm_acc::<B>(
        prim(y.reshape([1, m, n])),
        prim(x.reshape([1, m, k])),
        prim(w.reshape([1, n, k])),
        false,
        true,
        alpha,
        one_row,
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(c)).reshape([m, n])
}

fn prim<B: CubeB<CudaRuntime>>(t: Tensor<B, 3>) -> CubeTensor<CudaRuntime> {
    t.into_primitive().tensor()
}

/// [`strided_gemm`] of dense row-major 3-D `a`, `b`, `c` (each `[batch, rows, cols]`, stored
/// as their shapes say).
fn dense_gemm(
    a: &CubeTensor<CudaRuntime>,
    b: &CubeTensor<CudaRuntime>,
    c: &CubeTensor<CudaRuntime>,
    g: Gemm,
) {
    let mat = |t: &CubeTensor<CudaRuntime>| {
        let s = t.meta.shape();
        Mat {
            offset: 0,
            ld: s[2],
            stride: s[1] * s[2],
        }
    };
    strided_gemm((a, mat(a)), (b, mat(b)), (c, mat(c)), g);
}

/// Where one operand's matrices lie in its (contiguous) buffer: the first at `offset`
/// elements, rows `ld` elements apart, successive matrices of the batch `stride` apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub offset: usize,
    pub ld: usize,
    pub stride: usize,
}

/// A row-major strided-batched product `c[i] = α·op(a[i])·op(b[i]) + β·c[i]`, `op(a)` `[m, k]`,
/// `op(b)` `[k, n]`, `c` `[m, n]`, for `i < batch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub ta: bool,
    pub tb: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `op(a)·op(b)` for 3-D `a`, `b` (`[batch, ·, ·]`, `op` transposes the last two dims when
    /// `ta`/`tb`), α = 1, β = 0.
    ///
    /// # Panics
    /// On operands that are not 3-D, of different batch, or whose inner dims differ (wiring bugs).
    fn batched(
        a: &CubeTensor<CudaRuntime>,
        b: &CubeTensor<CudaRuntime>,
        ta: bool,
        tb: bool,
    ) -> Self {
        let (sa, sb) = (a.meta.shape().to_vec(), b.meta.shape().to_vec());
        assert!(
            sa.len() == 3 && sb.len() == 3 && sa[0] == sb[0],
            "qtune-kernels: matmul needs [batch, r, c] operands of one batch, got {sa:?} and {sb:?}"
        );
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
        Self {
            m,
            n,
            k,
            batch: sa[0],
            ta,
            tb,
            alpha: 1.0,
            beta: 0.0,
        }
    }
}
