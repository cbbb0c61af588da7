//! GPT-J's MLP core `gelu_new(x·W_inᵀ + b_in)·W_outᵀ` over frozen weights, quantized or dense,
//! as one op ([`mlp_gelu_new`]), so that the bias and the activation ride on the GEMMs'
//! epilogues on CUDA (cuBLASLt's GELU_BIAS, GELU_AUX_BIAS and DGELU) instead of separate passes
//! over the `[tokens, 4·D]` activation, and so that a checkpointed recompute that never reads
//! the MLP's output computes only the pre-activation its backward needs. The reference
//! composition (the defaults here) is the same sequence of ops as the unfused model code.

use burn::tensor::{
    backend::Backend, ops::FloatTensor, DType, Tensor, TensorMetadata, TensorPrimitive,
};

use crate::{LinearBackward, QBackend, QWeightPrimitive, QuantWeight};

/// A frozen `[out, in]` base weight as the MLP ops take it: quantized (dequantized just in time)
/// or dense (in the activation's dtype). Neither gets a gradient.
pub enum FrozenPrimitive<B: Backend> {
    Quant(QWeightPrimitive<B>),
    Dense(FloatTensor<B>),
}

impl<B: Backend> Clone for FrozenPrimitive<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Quant(w) => Self::Quant(w.clone()),
            Self::Dense(w) => Self::Dense(w.clone()),
        }
    }
}

impl<B: Backend> std::fmt::Debug for FrozenPrimitive<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quant(w) => f.debug_tuple("Quant").field(w).finish(),
            Self::Dense(w) => f.debug_tuple("Dense").field(&w.shape()).finish(),
        }
    }
}

impl<B: Backend> FrozenPrimitive<B> {
    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::Quant(w) => [w.layout.out_features, w.layout.in_features],
            Self::Dense(w) => w.shape().dims::<2>(),
        }
    }
}

/// A frozen base weight of a layer without an adapter, as the caller of [`mlp_gelu_new`] holds
/// it: a quantized weight, or a dense one in the activation's dtype that requires no gradient.
pub enum Frozen<'a, B: Backend> {
    Quant(&'a QuantWeight<B>),
    Dense(Tensor<B, 2>),
}

impl<B: Backend> Frozen<'_, B> {
    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::Quant(w) => w.shape(),
            Self::Dense(w) => w.dims(),
        }
    }

    /// The backend primitive, a dense weight in `dtype` (the activation's).
    pub fn primitive(&self, dtype: DType) -> FrozenPrimitive<B> {
        match self {
            Self::Quant(w) => FrozenPrimitive::Quant(w.primitive()),
            Self::Dense(w) if w.dtype() == dtype => {
                FrozenPrimitive::Dense(w.clone().into_primitive().tensor())
            }
            Self::Dense(w) => {
                FrozenPrimitive::Dense(w.clone().cast(dtype).into_primitive().tensor())
            }
        }
    }
}

impl<'a, B: Backend> From<&'a QuantWeight<B>> for Frozen<'a, B> {
    fn from(w: &'a QuantWeight<B>) -> Self {
        Self::Quant(w)
    }
}

/// `x[m, in] · wᵀ` for a frozen weight: [`QBackend::q_linear`], or a dense GEMM as
/// [`crate::linear_t`] computes it.
pub(crate) fn frozen_linear<B: QBackend>(
    x: FloatTensor<B>,
    w: FrozenPrimitive<B>,
) -> FloatTensor<B> {
    match w {
        FrozenPrimitive::Quant(w) => B::q_linear(x, w),
        FrozenPrimitive::Dense(w) => crate::linear::dense_linear::<B>(x, w, false),
    }
}

/// `dy[m, out] · w`, a frozen weight's input gradient: [`QBackend::q_linear_dx`], or the dense
/// GEMM.
pub(crate) fn frozen_linear_dx<B: QBackend>(
    dy: FloatTensor<B>,
    w: FrozenPrimitive<B>,
) -> FloatTensor<B> {
    match w {
        FrozenPrimitive::Quant(w) => B::q_linear_dx(dy, w),
        FrozenPrimitive::Dense(w) => crate::linear::dense_linear::<B>(dy, w, true),
    }
}

/// What follows a linear's product `x·Wᵀ` in [`QBackend::q_linear_bias_act`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasAct {
    /// `+ bias`: the pre-activation.
    Bias,
    /// `gelu_new(· + bias)`.
    GeluNew,
    /// `gelu_new(· + bias)`, and the pre-activation `· + bias` as a second output.
    GeluNewAux,
}

/// The reference [`QBackend::q_linear_bias_act`]: the product, then the bias and `gelu_new` as
/// the model applies them (the bias folded into the activation's op for [`BiasAct::GeluNew`]).
pub(crate) fn linear_bias_act_ops<B: QBackend>(
    x: FloatTensor<B>,
    w: FrozenPrimitive<B>,
    bias: FloatTensor<B>,
    act: BiasAct,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let y = frozen_linear::<B>(x, w);
    let with_bias = |y: FloatTensor<B>| {
        let n = bias.shape().dims::<1>()[0];
        let b = B::float_reshape(bias.clone(), burn::tensor::Shape::new([1, n]));
        B::float_add(y, b)
    };
    match act {
        BiasAct::Bias => (with_bias(y), None),
        BiasAct::GeluNew => (B::q_gelu_new(y, Some(bias)), None),
        BiasAct::GeluNewAux => {
            let pre = with_bias(y);
            (B::q_gelu_new(pre.clone(), None), Some(pre))
        }
    }
}

/// The reference [`QBackend::q_linear_dx_dgelu`]: the dx product, then `gelu_new`'s backward.
pub(crate) fn linear_dx_dgelu_ops<B: QBackend>(
    dy: FloatTensor<B>,
    w: FrozenPrimitive<B>,
    pre: FloatTensor<B>,
) -> FloatTensor<B> {
    B::q_gelu_new_backward(pre, None, frozen_linear_dx::<B>(dy, w))
}

/// The reference [`QBackend::q_mlp_gelu_new`] (no autodiff): the activation, then `W_out`.
pub(crate) fn mlp_gelu_new_ops<B: QBackend>(
    x: FloatTensor<B>,
    [w_in, w_out]: [FrozenPrimitive<B>; 2],
    b_in: FloatTensor<B>,
) -> FloatTensor<B> {
    let (h, _) = B::q_linear_bias_act(x, w_in, b_in, BiasAct::GeluNew);
    frozen_linear::<B>(h, w_out)
}

/// The reference [`QBackend::q_mlp_gelu_new_plus`]: the MLP op, then `b_out` and the adds one
/// by one, as `Linear::plus` sums them (so the model's values are unchanged on the CPU).
pub(crate) fn mlp_gelu_new_plus_ops<B: QBackend>(
    x: FloatTensor<B>,
    w: [FrozenPrimitive<B>; 2],
    [b_in, b_out]: [FloatTensor<B>; 2],
    adds: Vec<FloatTensor<B>>,
) -> FloatTensor<B> {
    let y = B::q_mlp_gelu_new(x, w, b_in, false);
    let n = b_out.shape().dims::<1>()[0];
    let y = B::float_add(y, B::float_reshape(b_out, burn::tensor::Shape::new([1, n])));
    adds.into_iter().fold(y, |y, a| B::float_add(y, a))
}

/// Whether [`mlp_gelu_new`] serves a pair of linears whose tracked backward is `backward`: it
/// keeps the quantized weights (dequantizing again in the backward), so not where the caller
/// asked to keep a dense copy of either.
pub fn mlp_fits(backward: LinearBackward, w_in: [usize; 2], w_out: [usize; 2]) -> bool {
    let elems = |s: [usize; 2]| s[0] * s[1];
    !backward.keeps_dense(elems(w_in)) && !backward.keeps_dense(elems(w_out))
}

/// `gelu_new(x·W_inᵀ + b_in)·W_outᵀ` over the last dim of `x` (`D` → `D`), every weight
/// (quantized, or dense: [`Frozen`]) and the bias frozen: GPT-J's MLP without `fc_out`'s bias,
/// through [`QBackend::q_mlp_gelu_new`]. With `unread` (a checkpointed recompute, whose block
/// output nobody reads) a tracked call computes only the pre-activation and returns
/// uninitialized memory, as [`crate::q_linear_unread`]; its gradient is the same.
///
/// # Panics
/// On shapes that do not chain (`x`'s last dim, `W_in [H, D]`, `b_in [H]`, `W_out [D', H]`): a
/// model wiring bug.
pub fn mlp_gelu_new<'a, B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w_in: impl Into<Frozen<'a, B>>,
    b_in: Tensor<B, 1>,
    w_out: impl Into<Frozen<'a, B>>,
    unread: bool,
) -> Tensor<B, D> {
    let (x2, w, b_in, out) = mlp_operands(x, w_in.into(), b_in, w_out.into());
    let y = B::q_mlp_gelu_new(x2, w, b_in, unread);
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out)
}

/// `gelu_new(x·Wᵀ + bias)` over the last dim of `x` for a frozen weight and bias through
/// [`QBackend::q_linear_bias_act`] (GPT-J's `fc_in` where [`mlp_gelu_new`] does not serve, as
/// at decode: on CUDA one row of a quantized weight is one GEMV launch with the bias and the
/// activation on its f32 sum). The default, and so the CPU, is the product and then
/// [`crate::bias_gelu_new`], bit for bit; under autodiff those two ops, tracked.
///
/// # Panics
/// On `x`'s last dim not `W`'s `in` or `bias` not `[out]` (a model wiring bug).
pub fn linear_bias_gelu_new<'a, B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: impl Into<Frozen<'a, B>>,
    bias: Tensor<B, 1>,
) -> Tensor<B, D> {
    let w = w.into();
    let [out_f, _] = w.shape();
    assert!(
        bias.dims() == [out_f],
        "linear_bias_gelu_new: bias {:?} against W's {out_f} outputs",
        bias.dims()
    );
    let dtype = x.dtype();
    let bias = if bias.dtype() == dtype {
        bias
    } else {
        bias.cast(dtype)
    };
    crate::linear::rows_through(x, w.shape(), "linear_bias_gelu_new", |x2| {
        let (y, _) = B::q_linear_bias_act(
            x2.into_primitive().tensor(),
            w.primitive(dtype),
            bias.into_primitive().tensor(),
            BiasAct::GeluNew,
        );
        Tensor::from_primitive(TensorPrimitive::Float(y))
    })
}

/// [`mlp_gelu_new`] (its output read) `+ b_out + adds[0] + adds[1] + …`: GPT-J's MLP with
/// `fc_out`'s bias and the block's other branches (attention output, residual), through
/// [`QBackend::q_mlp_gelu_new_plus`] (on CUDA the adds ride on `W_out`'s GEMM). The sum equals
/// [`mlp_gelu_new`], then the bias, then each add, on the CPU bit for bit.
///
/// # Panics
/// As [`mlp_gelu_new`]; on `b_out` not `[D']` or an add not of the output's shape.
pub fn mlp_gelu_new_plus<'a, B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    (w_in, b_in): (impl Into<Frozen<'a, B>>, Tensor<B, 1>),
    (w_out, b_out): (impl Into<Frozen<'a, B>>, Tensor<B, 1>),
    adds: Vec<Tensor<B, D>>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let (x2, w, b_in, out) = mlp_operands(x, w_in.into(), b_in, w_out.into());
    let (m, d_out) = (out[..D - 1].iter().product::<usize>(), out[D - 1]);
    assert!(
        b_out.dims() == [d_out] && adds.iter().all(|a| a.dims() == out),
        "mlp_gelu_new_plus: b_out {:?} and adds {:?} against the output {out:?}",
        b_out.dims(),
        adds.iter().map(|a| a.dims()).collect::<Vec<_>>()
    );
    let b_out = if b_out.dtype() == dtype {
        b_out
    } else {
        b_out.cast(dtype)
    };
    let adds = adds
        .into_iter()
        .map(|a| a.reshape([m, d_out]).into_primitive().tensor())
        .collect();
    let b = [b_in, b_out.into_primitive().tensor()];
    let y = B::q_mlp_gelu_new_plus(x2, w, b, adds);
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out)
}

/// `x` as `[m, D]`, the weights' primitives (a dense one in `x`'s dtype), `b_in` in `x`'s dtype
/// and the output's shape, after checking that the shapes chain.
#[allow(clippy::type_complexity)]
fn mlp_operands<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w_in: Frozen<'_, B>,
    b_in: Tensor<B, 1>,
    w_out: Frozen<'_, B>,
) -> (
    FloatTensor<B>,
    [FrozenPrimitive<B>; 2],
    FloatTensor<B>,
    [usize; D],
) {
    let dims = x.dims();
    let ([hidden, d_in], [d_out, hidden_out]) = (w_in.shape(), w_out.shape());
    assert!(
        dims[D - 1] == d_in && b_in.dims()[0] == hidden && hidden_out == hidden,
        "mlp_gelu_new: x [.., {}] · W_in [{hidden}, {d_in}] + b_in [{}] · W_out [{d_out}, {hidden_out}]",
        dims[D - 1],
        b_in.dims()[0]
    );
    let frozen = |w: &Frozen<'_, B>| !matches!(w, Frozen::Dense(t) if t.is_require_grad());
    assert!(
        frozen(&w_in) && frozen(&w_out),
        "mlp_gelu_new: a dense weight that requires a gradient (the op gives weights none)"
    );
    let dtype = x.dtype();
    let b_in = if b_in.dtype() == dtype {
        b_in
    } else {
        b_in.cast(dtype)
    };
    let m = dims[..D - 1].iter().product::<usize>();
    let x2 = x.reshape([m, d_in]).into_primitive().tensor();
    let mut out = dims;
    out[D - 1] = d_out;
    let w = [w_in.primitive(dtype), w_out.primitive(dtype)];
    (x2, w, b_in.into_primitive().tensor(), out)
}
