//! LoRA's adapter product `y + scaling·(dropout(x)·Aᵀ)·Bᵀ` ([`QBackend::q_lora_acc`]): the
//! composition of the primitives every backend runs (the autodiff node in `autodiff/lora.rs`
//! keeps what it returns besides the output), and the tensor-level wrapper [`lora_acc`].

use burn::tensor::{backend::Backend, ops::FloatTensor, Tensor, TensorMetadata, TensorPrimitive};

use crate::{GemmAccOptions, GemmOptions, LoraOptions, QBackend};

/// `y + scaling·(dropout(x)·Aᵀ)·Bᵀ` over the last dim of `x [.., in]` (`in` → `out`, onto
/// `y [.., out]`) for LoRA factors `a [r, in]`, `b [out, r]` in any float dtype (cast to `x`'s
/// for the product; their gradients come back in theirs), through [`QBackend::q_lora_acc`].
///
/// # Panics
/// On shapes that do not fit (a model wiring bug) or a drop probability outside `[0, 1)`
/// (configs are validated before a model is built).
pub fn lora_acc<B: QBackend, const D: usize>(
    y: Tensor<B, D>,
    x: Tensor<B, D>,
    [a, b]: [Tensor<B, 2>; 2],
    opts: LoraOptions,
) -> Tensor<B, D> {
    let (dims, ydims) = (x.dims(), y.dims());
    let ([_, in_f], [out_f, _]) = (a.dims(), b.dims());
    check_fit("lora_acc", dims, ydims, [a.dims(), b.dims()], &opts);
    let m = dims[..D - 1].iter().product::<usize>();
    let out = B::q_lora_acc(
        y.reshape([m, out_f]).into_primitive().tensor(),
        x.reshape([m, in_f]).into_primitive().tensor(),
        [a.into_primitive().tensor(), b.into_primitive().tensor()],
        opts,
    );
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape(ydims)
}

/// [`lora_acc`] for two or three adapters of one input `x [.., in]`, adapter `i` (`factors[i]`,
/// `opts[i]`) onto `ys[i]`, through [`QBackend::q_lora_acc_parts`] (one pair of launches for a
/// single row on CUDA); each result equal bit for bit to its own `lora_acc`.
///
/// # Panics
/// As [`lora_acc`] for any part, or for lists of different lengths.
pub fn lora_acc_parts<B: QBackend, const D: usize>(
    ys: Vec<Tensor<B, D>>,
    x: Tensor<B, D>,
    factors: Vec<[Tensor<B, 2>; 2]>,
    opts: Vec<LoraOptions>,
) -> Vec<Tensor<B, D>> {
    assert!(
        ys.len() == factors.len() && ys.len() == opts.len(),
        "lora_acc_parts: {} outputs, {} factor pairs, {} option sets",
        ys.len(),
        factors.len(),
        opts.len()
    );
    let dims = x.dims();
    let m = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = Vec::with_capacity(ys.len());
    let mut ys2 = Vec::with_capacity(ys.len());
    for ((y, [a, b]), o) in ys.into_iter().zip(&factors).zip(&opts) {
        let ydims = y.dims();
        check_fit("lora_acc_parts", dims, ydims, [a.dims(), b.dims()], o);
        out_dims.push(ydims);
        ys2.push(y.reshape([m, ydims[D - 1]]).into_primitive().tensor());
    }
    let x2 = x.reshape([m, dims[D - 1]]).into_primitive().tensor();
    let factors = factors
        .into_iter()
        .map(|[a, b]| [a.into_primitive().tensor(), b.into_primitive().tensor()])
        .collect();
    B::q_lora_acc_parts(ys2, x2, factors, opts)
        .into_iter()
        .zip(out_dims)
        .map(|(y, d)| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(d))
        .collect()
}

/// Panics (naming `what`) unless `x [.., in]`, `y [.., out]` (the same leading dims) and the
/// factors `A [r, in]`, `B [out, r]` fit, and `opts`' drop probability lies in `[0, 1)`.
fn check_fit<const D: usize>(
    what: &str,
    dims: [usize; D],
    ydims: [usize; D],
    [[r, in_f], [out_f, rb]]: [[usize; 2]; 2],
    opts: &LoraOptions,
) {
    assert!(
        dims[D - 1] == in_f && ydims[D - 1] == out_f && r == rb && dims[..D - 1] == ydims[..D - 1],
        "{what}: x {dims:?}, A [{r}, {in_f}], B [{out_f}, {rb}] and y {ydims:?} do not fit"
    );
    if let Some((p, _)) = opts.dropout {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability {p} outside [0, 1)"
        );
    }
}

/// [`QBackend::q_lora_acc_parts`] as one [`QBackend::q_lora_acc`] per part (the default).
pub(crate) fn acc_parts_each<B: QBackend>(
    ys: Vec<FloatTensor<B>>,
    x: FloatTensor<B>,
    factors: Vec<[FloatTensor<B>; 2]>,
    opts: Vec<LoraOptions>,
) -> Vec<FloatTensor<B>> {
    ys.into_iter()
        .zip(factors)
        .zip(opts)
        .map(|((y, ab), o)| B::q_lora_acc(y, x.clone(), ab, o))
        .collect()
}

/// What [`QBackend::q_lora_acc`]'s forward computes, with what its backward needs kept: the
/// dropped input, the `A` product and the factors in the activation dtype.
pub(crate) struct Forward<B: Backend> {
    pub(crate) out: FloatTensor<B>,
    pub(crate) xd: FloatTensor<B>,
    pub(crate) u: FloatTensor<B>,
    pub(crate) a: FloatTensor<B>,
    pub(crate) b: FloatTensor<B>,
}

/// The composition behind [`QBackend::q_lora_acc`] (2-D operands; see there).
pub(crate) fn forward<B: QBackend>(
    y: FloatTensor<B>,
    x: FloatTensor<B>,
    [a, b]: [FloatTensor<B>; 2],
    opts: LoraOptions,
) -> Forward<B> {
    use burn::tensor::Shape;
    let dtype = x.dtype();
    let y = in_dtype::<B>(y, dtype);
    let [xd, a, b] = B::q_lora_prep(x, opts.dropout, [a, b]);
    let ([m, k], [r, _], [n, _]) = (
        xd.shape().dims::<2>(),
        a.shape().dims::<2>(),
        b.shape().dims::<2>(),
    );
    let u = B::q_gemm(
        B::float_reshape(xd.clone(), Shape::new([1, m, k])),
        B::float_reshape(a.clone(), Shape::new([1, r, k])),
        GemmOptions::new(false, true, dtype),
    );
    let out = B::q_gemm_acc(
        B::float_reshape(y, Shape::new([1, m, n])),
        [
            u.clone(),
            B::float_reshape(b.clone(), Shape::new([1, n, r])),
        ],
        GemmAccOptions {
            ta: false,
            tb: true,
            alpha: opts.scaling,
        },
    );
    Forward {
        out: B::float_reshape(out, Shape::new([m, n])),
        xd,
        u: B::float_reshape(u, Shape::new([m, r])),
        a,
        b,
    }
}

/// [`QBackend::q_lora_prep`] as separate ops: each factor cast to `x`'s dtype (when it differs),
/// then the dropout (when `p > 0`).
pub(crate) fn prep_ops<B: QBackend>(
    x: FloatTensor<B>,
    dropout: Option<(f32, u64)>,
    [a, b]: [FloatTensor<B>; 2],
) -> [FloatTensor<B>; 3] {
    let dtype = x.dtype();
    let (a, b) = (in_dtype::<B>(a, dtype), in_dtype::<B>(b, dtype));
    let xd = match dropout {
        Some((p, seed)) if p > 0.0 => B::q_dropout(x, p, seed),
        _ => x,
    };
    [xd, a, b]
}

/// `t` in `dtype` (itself when it already is).
pub(crate) fn in_dtype<B: Backend>(
    t: FloatTensor<B>,
    dtype: burn::tensor::DType,
) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}
