//! CPU (NdArray) tests of the fused MLP ops `mlp_gelu_new` and `mlp_gelu_new_plus`: their
//! forward and gradient equal the unfused ops the model would otherwise run (`q_linear`, or
//! `linear_t` for dense weights, `bias_gelu_new`, the second product, then the bias and the
//! block's adds) bit for bit, tracked, untracked and with the output unread (a checkpointed
//! recompute).

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use qtune_kernels::{
    bias_gelu_new, linear_bias_gelu_new, linear_t, mlp_fits, mlp_gelu_new, mlp_gelu_new_plus,
    q_linear, Frozen, LinearBackward, QuantWeight,
};
use qtune_quant::{FloatDType, QuantFormat, QuantSpec, QuantizedTensor};

type Nd = NdArray;
type Ad = Autodiff<NdArray>;

/// Deterministic pseudo-random values in `[-scale, scale)`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn weight<B: qtune_kernels::QBackend>(out_f: usize, in_f: usize, seed: u64) -> QuantWeight<B> {
    let spec = QuantSpec {
        format: QuantFormat::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let w = values(out_f * in_f, seed, 0.3);
    let q = QuantizedTensor::quantize("w", &w, &[out_f, in_f], spec, FloatDType::F32)
        .expect("quantize");
    QuantWeight::from_quantized(&q, &Default::default())
}

const D: usize = 16;
const H: usize = 40;

fn tensor<B: burn::tensor::backend::Backend, const N: usize>(
    shape: [usize; N],
    seed: u64,
) -> Tensor<B, N> {
    let n = shape.iter().product();
    Tensor::from_data(
        TensorData::new(values(n, seed, 1.0), shape),
        &Default::default(),
    )
}

fn unfused<B: qtune_kernels::QBackend>(
    x: Tensor<B, 3>,
    [w_in, w_out]: [&QuantWeight<B>; 2],
    b: Tensor<B, 1>,
) -> Tensor<B, 3> {
    q_linear(bias_gelu_new(q_linear(x, w_in), b), w_out)
}

#[test]
fn forward_equals_the_unfused_ops_bit_for_bit() {
    let (w_in, w_out) = (weight::<Nd>(H, D, 1), weight::<Nd>(D, H, 2));
    let (x, b) = (tensor::<Nd, 3>([2, 3, D], 3), tensor::<Nd, 1>([H], 4));
    let want = unfused(x.clone(), [&w_in, &w_out], b.clone());
    for unread in [false, true] {
        // Without autodiff `unread` changes nothing: the product is computed.
        let got = mlp_gelu_new(x.clone(), &w_in, b.clone(), &w_out, unread);
        assert_eq!(got.into_data(), want.clone().into_data(), "unread {unread}");
    }
    // Autodiff, input not tracked (the no-graph forward of a checkpointed block).
    let (wa_in, wa_out) = (weight::<Ad>(H, D, 1), weight::<Ad>(D, H, 2));
    let xa = Tensor::<Ad, 3>::from_data(x.into_data(), &Default::default());
    let ba = Tensor::<Ad, 1>::from_data(b.into_data(), &Default::default());
    let got = mlp_gelu_new(xa, &wa_in, ba, &wa_out, false);
    assert_eq!(got.into_data(), want.into_data());
}

#[test]
fn gradient_equals_the_unfused_ops_bit_for_bit_read_or_unread() {
    let (w_in, w_out) = (weight::<Ad>(H, D, 5), weight::<Ad>(D, H, 6));
    let b = tensor::<Ad, 1>([H], 7);
    let g = tensor::<Ad, 3>([2, 3, D], 8);
    let grad = |f: &dyn Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>| {
        let x = tensor::<Ad, 3>([2, 3, D], 9).require_grad();
        // The input also reaches the loss directly (as GPT-J's residual), so its gradient sums
        // two paths.
        let y = f(x.clone()) + x.clone() * 0.5;
        let grads = (y.clone() * g.clone()).sum().backward();
        let dx = x.grad(&grads).expect("x is tracked").into_data();
        (y.inner().into_data(), dx)
    };
    let (want_y, want_dx) = grad(&|x| unfused(x, [&w_in, &w_out], b.clone()));
    let (got_y, got_dx) = grad(&|x| mlp_gelu_new(x, &w_in, b.clone(), &w_out, false));
    assert_eq!(got_y, want_y, "tracked forward");
    assert_eq!(got_dx, want_dx, "tracked gradient");
    // Unread: the values are not computed, the gradient is the same.
    let (_, unread_dx) = grad(&|x| mlp_gelu_new(x, &w_in, b.clone(), &w_out, true));
    assert_eq!(unread_dx, want_dx, "unread gradient");
    // The gradient is not the one without the activation's derivative (the test can fail).
    let (_, linear_dx) = grad(&|x| q_linear(q_linear(x, &w_in), &w_out));
    assert_ne!(linear_dx, want_dx);
}

/// The unfused block sum GPT-J's `Linear::plus` makes: `((mlp + b_out) + attn) + h`.
fn unfused_plus<B: qtune_kernels::QBackend>(
    x: Tensor<B, 3>,
    w: [&QuantWeight<B>; 2],
    [b_in, b_out]: [Tensor<B, 1>; 2],
    adds: Vec<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    let y = unfused(x, w, b_in) + b_out.unsqueeze::<3>();
    adds.into_iter().fold(y, |y, a| y + a)
}

#[test]
fn plus_equals_the_unfused_sum_bit_for_bit_and_sends_the_gradient_to_every_term() {
    let (w_in, w_out) = (weight::<Ad>(H, D, 11), weight::<Ad>(D, H, 12));
    let b = [tensor::<Ad, 1>([H], 13), tensor::<Ad, 1>([D], 14)];
    let g = tensor::<Ad, 3>([2, 3, D], 15);
    type Sum<'a> = &'a dyn Fn(Tensor<Ad, 3>, Vec<Tensor<Ad, 3>>) -> Tensor<Ad, 3>;
    let run = |f: Sum, tracked: bool| {
        let x = tensor::<Ad, 3>([2, 3, D], 16);
        let adds: Vec<_> = (0..2).map(|i| tensor::<Ad, 3>([2, 3, D], 17 + i)).collect();
        let (x, adds) = match tracked {
            true => (
                x.require_grad(),
                adds.into_iter().map(|a| a.require_grad()).collect(),
            ),
            false => (x, adds),
        };
        let y = f(x.clone(), adds.clone());
        let grads = (y.clone() * g.clone()).sum().backward();
        let dx: Vec<_> = std::iter::once(&x)
            .chain(&adds)
            .filter_map(|t| t.grad(&grads).map(|d| d.into_data()))
            .collect();
        (y.inner().into_data(), dx)
    };
    let want: Sum = &|x, adds| unfused_plus(x, [&w_in, &w_out], b.clone(), adds);
    let got: Sum =
        &|x, adds| mlp_gelu_new_plus(x, (&w_in, b[0].clone()), (&w_out, b[1].clone()), adds);
    for tracked in [false, true] {
        let ((want_y, want_dx), (got_y, got_dx)) = (run(want, tracked), run(got, tracked));
        assert_eq!(got_y, want_y, "forward, tracked {tracked}");
        assert_eq!(got_dx, want_dx, "gradients, tracked {tracked}");
        assert_eq!(got_dx.len(), if tracked { 3 } else { 0 });
    }
    // The bias and the adds are in the sum (the test can fail).
    let (without, _) = run(
        &|x, _| mlp_gelu_new(x, &w_in, b[0].clone(), &w_out, false),
        false,
    );
    assert_ne!(without, run(got, false).0);
    // On the plain backend too.
    let (wn_in, wn_out) = (weight::<Nd>(H, D, 11), weight::<Nd>(D, H, 12));
    let bn = [tensor::<Nd, 1>([H], 13), tensor::<Nd, 1>([D], 14)];
    let x = tensor::<Nd, 3>([2, 3, D], 16);
    let adds: Vec<_> = (0..2).map(|i| tensor::<Nd, 3>([2, 3, D], 17 + i)).collect();
    let want = unfused_plus(x.clone(), [&wn_in, &wn_out], bn.clone(), adds.clone());
    let [bn_in, bn_out] = bn;
    let got = mlp_gelu_new_plus(x, (&wn_in, bn_in), (&wn_out, bn_out), adds);
    assert_eq!(got.into_data(), want.into_data());
}

#[test]
fn the_fused_op_serves_only_linears_that_keep_the_quantized_weight() {
    let (a, b) = ([H, D], [D, H]);
    assert!(mlp_fits(LinearBackward::Quantized, a, b));
    assert!(!mlp_fits(LinearBackward::Dense, a, b));
    assert!(mlp_fits(LinearBackward::DenseUpTo(H * D - 1), a, b));
    assert!(!mlp_fits(LinearBackward::DenseUpTo(H * D), a, b));
}

/// The unfused MLP over dense frozen weights, as GPT-J's bf16 model ran it before the fused op
/// took dense weights: `linear_t`, `bias_gelu_new`, `linear_t`.
fn dense_unfused<B: qtune_kernels::QBackend>(
    x: Tensor<B, 3>,
    [w_in, w_out]: [&Tensor<B, 2>; 2],
    b: Tensor<B, 1>,
) -> Tensor<B, 3> {
    linear_t(bias_gelu_new(linear_t(x, w_in.clone()), b), w_out.clone())
}

#[test]
fn dense_weights_forward_and_gradient_equal_the_unfused_ops_bit_for_bit() {
    let (w_in, w_out) = (tensor::<Ad, 2>([H, D], 21), tensor::<Ad, 2>([D, H], 22));
    let b = tensor::<Ad, 1>([H], 23);
    let g = tensor::<Ad, 3>([2, 3, D], 24);
    let grad = |f: &dyn Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>| {
        let x = tensor::<Ad, 3>([2, 3, D], 25).require_grad();
        let y = f(x.clone()) + x.clone() * 0.5;
        let grads = (y.clone() * g.clone()).sum().backward();
        let dx = x.grad(&grads).expect("x is tracked").into_data();
        (y.inner().into_data(), dx)
    };
    let fused = |x: Tensor<Ad, 3>, unread: bool| {
        let (i, o) = (Frozen::Dense(w_in.clone()), Frozen::Dense(w_out.clone()));
        mlp_gelu_new(x, i, b.clone(), o, unread)
    };
    let (want_y, want_dx) = grad(&|x| dense_unfused(x, [&w_in, &w_out], b.clone()));
    let (got_y, got_dx) = grad(&|x| fused(x, false));
    assert_eq!(got_y, want_y, "tracked forward");
    assert_eq!(got_dx, want_dx, "tracked gradient");
    let (_, unread_dx) = grad(&|x| fused(x, true));
    assert_eq!(unread_dx, want_dx, "unread gradient");
    let (_, linear_dx) = grad(&|x| linear_t(linear_t(x, w_in.clone()), w_out.clone()));
    assert_ne!(linear_dx, want_dx);

    // The block sum on the plain backend, and under autodiff untracked.
    let bo = tensor::<Nd, 1>([D], 26);
    let (wn_in, wn_out) = (tensor::<Nd, 2>([H, D], 21), tensor::<Nd, 2>([D, H], 22));
    let bn = tensor::<Nd, 1>([H], 23);
    let x = tensor::<Nd, 3>([2, 3, D], 27);
    let adds: Vec<_> = (0..2).map(|i| tensor::<Nd, 3>([2, 3, D], 28 + i)).collect();
    let y = dense_unfused(x.clone(), [&wn_in, &wn_out], bn.clone()) + bo.clone().unsqueeze::<3>();
    let want = adds.iter().fold(y, |y, a| y + a.clone());
    let got = mlp_gelu_new_plus(
        x,
        (Frozen::Dense(wn_in), bn),
        (Frozen::Dense(wn_out), bo),
        adds,
    );
    assert_eq!(got.into_data(), want.into_data());
}

#[test]
#[should_panic(expected = "requires a gradient")]
fn a_dense_weight_that_trains_is_refused() {
    let w_in = tensor::<Ad, 2>([H, D], 31).require_grad();
    let w_out = tensor::<Ad, 2>([D, H], 32);
    let x = tensor::<Ad, 3>([2, 3, D], 33);
    let b = tensor::<Ad, 1>([H], 34);
    let _ = mlp_gelu_new(x, Frozen::Dense(w_in), b, Frozen::Dense(w_out), false);
}

/// `linear_bias_gelu_new` (GPT-J's `fc_in` at decode) is the product then `bias_gelu_new`, bit
/// for bit, for one row and several, quantized and dense; under autodiff its gradient too.
#[test]
fn linear_bias_gelu_new_equals_the_product_then_bias_gelu_new() {
    let (w, wd) = (weight::<Nd>(H, D, 41), tensor::<Nd, 2>([H, D], 42));
    let b = tensor::<Nd, 1>([H], 43);
    for shape in [[1, 1, D], [2, 3, D]] {
        let x = tensor::<Nd, 3>(shape, 44);
        let want = bias_gelu_new(q_linear(x.clone(), &w), b.clone());
        let got = linear_bias_gelu_new(x.clone(), &w, b.clone());
        assert_eq!(got.into_data(), want.into_data(), "quantized {shape:?}");
        let want = bias_gelu_new(linear_t(x.clone(), wd.clone()), b.clone());
        let got = linear_bias_gelu_new(x, Frozen::Dense(wd.clone()), b.clone());
        assert_eq!(got.into_data(), want.into_data(), "dense {shape:?}");
    }
    let (wa, ba, g) = (
        weight::<Ad>(H, D, 41),
        tensor::<Ad, 1>([H], 43),
        tensor::<Ad, 3>([1, 1, H], 45),
    );
    let grad = |f: &dyn Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>| {
        let x = tensor::<Ad, 3>([1, 1, D], 44).require_grad();
        let grads = (f(x.clone()) * g.clone()).sum().backward();
        x.grad(&grads).expect("x is tracked").into_data()
    };
    let want = grad(&|x| bias_gelu_new(q_linear(x, &wa), ba.clone()));
    assert_eq!(grad(&|x| linear_bias_gelu_new(x, &wa, ba.clone())), want);
}
