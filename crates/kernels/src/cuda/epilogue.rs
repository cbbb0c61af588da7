//! The quantized linear's GEMM with a cuBLASLt epilogue: GPT-J's `fc_in` bias and `gelu_new`
//! computed on the f32 accumulator before the one rounding to the activation dtype (GELU_BIAS,
//! or GELU_AUX_BIAS also writing the pre-activation for the backward; BIAS alone in a recompute
//! that needs only the pre-activation), and `fc_out`'s input gradient multiplied by
//! `gelu_new'(pre)` in its dx GEMM (DGELU). Each replaces a pass over the `[tokens, 4·D]`
//! activation (BENCHMARKS.md, session 15: 9.8 ms of a GPT-J-6B step went to the three gelu
//! passes). cuBLASLt's GELU is the tanh approximation, HF's `gelu_new`.
//!
//! The CPU reference of each op is the default composition in `crate::mlp` (product, bias,
//! `gelu_new` kernel); gpu-check compares the two on the GPU.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use super::gemm::{strided_gemm_epilogue, Gemm, Mat};
use super::gemm_lt::Epilogue;
use super::launch::empty;
use crate::BiasAct;

/// Environment variable: `0` turns the epilogues off (the bias and GELU then run as separate
/// kernels, as before them), `1` (or unset) on; any other value is refused by
/// `QBackend::q_check_device`, before any work.
pub const EPILOGUES_ENV: &str = "QTUNE_GEMM_EPILOGUES";

/// [`EPILOGUES_ENV`]'s setting, read once.
///
/// # Errors
/// [`crate::KernelError::Setting`] for a value other than `0` or `1`.
pub(crate) fn epilogues_from_env() -> Result<bool, crate::KernelError> {
    static SETTING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let value = SETTING.get_or_init(|| std::env::var(EPILOGUES_ENV).ok());
    crate::switch_setting(
        EPILOGUES_ENV,
        value.as_deref(),
        "bias and GELU as separate kernels",
        "in the GEMM's epilogue",
    )
}

/// Whether the epilogue GEMM serves an output of `m` rows and `n` columns in `dtype`: bf16 or
/// f16 (what cuBLASLt's GELU epilogues are documented and used for), more than one row (one
/// row takes the GEMV kernels), `n` a multiple of 8 (cuBLASLt requires the auxiliary matrix's
/// leading dimension to be), and not turned off by [`EPILOGUES_ENV`].
///
/// # Panics
/// On a value of [`EPILOGUES_ENV`] that `q_check_device` would have refused before any work.
pub(crate) fn fits(m: usize, n: usize, dtype: DType) -> bool {
    let on = epilogues_from_env().unwrap_or_else(|e| panic!("qtune-kernels: {e}"));
    on && m > 1 && n % 8 == 0 && matches!(dtype, DType::BF16 | DType::F16)
}

/// Row-major `[rows, cols]` stored densely.
fn dense(cols: usize, rows: usize) -> Mat {
    Mat {
        offset: 0,
        ld: cols,
        stride: rows * cols,
    }
}

/// `x [m, k] · wd [n, k]ᵀ + bias [n]`, then `act`, for a dense `wd` in `x`'s dtype; the
/// pre-activation too for [`BiasAct::GeluNewAux`].
pub(crate) fn linear_bias_act(
    x: CubeTensor<CudaRuntime>,
    wd: &CubeTensor<CudaRuntime>,
    bias: CubeTensor<CudaRuntime>,
    act: BiasAct,
) -> (CubeTensor<CudaRuntime>, Option<CubeTensor<CudaRuntime>>) {
    let (x, bias) = (into_contiguous(x), into_contiguous(bias));
    let ([m, k], [n, kw]) = (dims2(&x), dims2(wd));
    assert!(
        kw == k && bias.meta.shape().to_vec() == vec![n] && bias.dtype == x.dtype,
        "qtune-kernels: epilogue GEMM x [{m}, {k}] · W [{n}, {kw}] + bias {:?} ({:?} vs {:?})",
        bias.meta.shape(),
        bias.dtype,
        x.dtype
    );
    let y = empty(&x, vec![m, n], x.dtype);
    let aux = (act == BiasAct::GeluNewAux).then(|| empty(&x, vec![m, n], x.dtype));
    let kind = match act {
        BiasAct::Bias => Epilogue::Bias,
        BiasAct::GeluNew => Epilogue::GeluBias,
        BiasAct::GeluNewAux => Epilogue::GeluAuxBias,
    };
    let g = Gemm {
        m,
        n,
        k,
        batch: 1,
        ta: false,
        tb: true,
        alpha: 1.0,
        beta: 0.0,
    };
    strided_gemm_epilogue(
        (&x, dense(k, m)),
        (wd, dense(k, n)),
        (&y, dense(n, m)),
        g,
        (kind, Some(&bias), aux.as_ref().map(|a| (a, n))),
    );
    (y, aux)
}

/// Whether [`linear_bias_acc`] may write `acc` in place as an `[m, n]` output: nothing else
/// holds its buffer and it is stored densely with that shape.
pub(crate) fn accumulates_into(acc: &CubeTensor<CudaRuntime>, [m, n]: [usize; 2]) -> bool {
    acc.can_mut() && acc.is_contiguous_buffer() && acc.meta.shape().to_vec() == vec![m, n]
}

/// `acc += x [m, k] · wd [n, k]ᵀ + bias [n]` in `acc`'s own buffer (β = 1 with the BIAS
/// epilogue: the product and the bias summed in f32 with `acc`'s value, rounded once).
///
/// # Panics
/// Unless [`accumulates_into`] holds for `acc`, or on shapes or dtypes that do not fit.
pub(crate) fn linear_bias_acc(
    x: CubeTensor<CudaRuntime>,
    wd: &CubeTensor<CudaRuntime>,
    bias: CubeTensor<CudaRuntime>,
    acc: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let (x, bias) = (into_contiguous(x), into_contiguous(bias));
    let ([m, k], [n, kw]) = (dims2(&x), dims2(wd));
    assert!(
        accumulates_into(&acc, [m, n])
            && kw == k
            && bias.meta.shape().to_vec() == vec![n]
            && bias.dtype == x.dtype
            && acc.dtype == x.dtype,
        "qtune-kernels: epilogue GEMM acc {:?} += x [{m}, {k}] · W [{n}, {kw}] + bias {:?} \
         ({:?}, {:?} vs {:?})",
        acc.meta.shape(),
        bias.meta.shape(),
        bias.dtype,
        acc.dtype,
        x.dtype
    );
    let g = Gemm {
        m,
        n,
        k,
        batch: 1,
        ta: false,
        tb: true,
        alpha: 1.0,
        beta: 1.0,
    };
    strided_gemm_epilogue(
        (&x, dense(k, m)),
        (wd, dense(k, n)),
        (&acc, dense(n, m)),
        g,
        (Epilogue::Bias, Some(&bias), None),
    );
    acc
}

/// `(dy [m, n] · wd [n, k]) ⊙ gelu_new'(pre [m, k])` for a dense `wd` in `dy`'s dtype.
pub(crate) fn dx_dgelu(
    dy: CubeTensor<CudaRuntime>,
    wd: &CubeTensor<CudaRuntime>,
    pre: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let (dy, pre) = (into_contiguous(dy), into_contiguous(pre));
    let ([m, n], [nw, k]) = (dims2(&dy), dims2(wd));
    assert!(
        nw == n && dims2(&pre) == [m, k] && pre.dtype == dy.dtype,
        "qtune-kernels: DGELU GEMM dy [{m}, {n}] · W [{nw}, {k}] against pre {:?}",
        pre.meta.shape()
    );
    let dx = empty(&dy, vec![m, k], dy.dtype);
    let g = Gemm {
        m,
        n: k,
        k: n,
        batch: 1,
        ta: false,
        tb: false,
        alpha: 1.0,
        beta: 0.0,
    };
    strided_gemm_epilogue(
        (&dy, dense(n, m)),
        (wd, dense(k, n)),
        (&dx, dense(k, m)),
        g,
        (Epilogue::DGelu, None, Some((&pre, k))),
    );
    dx
}

fn dims2(t: &CubeTensor<CudaRuntime>) -> [usize; 2] {
    let s = t.meta.shape();
    assert_eq!(
        s.len(),
        2,
        "qtune-kernels: epilogue GEMM operand of shape {s:?}"
    );
    [s[0], s[1]]
}
