//! CPU (NdArray) tests of the fused MLP op `mlp_gelu_new`: its forward and its gradient equal
//! the unfused ops the model would otherwise run (`q_linear`, `bias_gelu_new`, `q_linear`) bit
//! for bit, tracked, untracked and with the output unread (a checkpointed recompute).

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use qtune_kernels::{bias_gelu_new, mlp_fits, mlp_gelu_new, q_linear, LinearBackward, QuantWeight};
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

#[test]
fn the_fused_op_serves_only_linears_that_keep_the_quantized_weight() {
    let (a, b) = ([H, D], [D, H]);
    assert!(mlp_fits(LinearBackward::Quantized, a, b));
    assert!(!mlp_fits(LinearBackward::Dense, a, b));
    assert!(mlp_fits(LinearBackward::DenseUpTo(H * D - 1), a, b));
    assert!(!mlp_fits(LinearBackward::DenseUpTo(H * D), a, b));
}
