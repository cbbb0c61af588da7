//! CPU (NdArray) tests of the LM head's loss `linear_cross_entropy` (the input gradient computed
//! in the forward instead of keeping the logits): its losses equal the unfused ops'
//! (`linear_t`, the bias add, `cross_entropy`) bit for bit, untracked and tracked, with and
//! without a bias; its input gradient equals theirs for a different upstream gradient per row;
//! the head's weight and bias get none.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::{cross_entropy, linear_cross_entropy, linear_t};

type Nd = NdArray;
type Ad = Autodiff<NdArray>;

const ROWS: usize = 6;
const D: usize = 12;
const V: usize = 37;

fn tensor<B: burn::tensor::backend::Backend, const N: usize>(
    shape: [usize; N],
    seed: u64,
    scale: f32,
) -> Tensor<B, N> {
    let n = shape.iter().product();
    let v = qtune_testkit::values(n, seed, scale);
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn targets<B: burn::tensor::backend::Backend>() -> Tensor<B, 1, Int> {
    let t: Vec<i64> = vec![0, 36, 5, 5, 17, 2];
    Tensor::from_data(TensorData::new(t, [ROWS]), &Default::default())
}

fn unfused<B: qtune_kernels::QBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 1> {
    let z = linear_t(x, w);
    let z = match bias {
        Some(b) => z + b.unsqueeze::<2>(),
        None => z,
    };
    cross_entropy(z, targets())
}

fn max_rel(a: Vec<f32>, b: Vec<f32>) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn losses_equal_the_unfused_ops_bit_for_bit() {
    for with_bias in [true, false] {
        let (x, w) = (
            tensor::<Nd, 2>([ROWS, D], 1, 2.0),
            tensor::<Nd, 2>([V, D], 2, 0.5),
        );
        let b = with_bias.then(|| tensor::<Nd, 1>([V], 3, 1.0));
        let want = unfused(x.clone(), w.clone(), b.clone()).into_data();
        let got = linear_cross_entropy(x.clone(), w.clone(), b.clone(), targets());
        assert_eq!(got.into_data(), want, "plain backend, bias {with_bias}");
        // Autodiff, untracked (an evaluation loss) and tracked (training).
        let ad = |t: Tensor<Nd, 2>| Tensor::<Ad, 2>::from_inner(t);
        let ba = b.map(Tensor::<Ad, 1>::from_inner);
        for tracked in [false, true] {
            let xa = if tracked {
                ad(x.clone()).require_grad()
            } else {
                ad(x.clone())
            };
            let got = linear_cross_entropy(xa, ad(w.clone()), ba.clone(), targets());
            assert_eq!(
                got.inner().into_data(),
                want,
                "bias {with_bias}, tracked {tracked}"
            );
        }
    }
}

#[test]
fn input_gradient_equals_the_unfused_ops_for_any_row_weights() {
    for with_bias in [true, false] {
        let w = tensor::<Ad, 2>([V, D], 5, 0.5);
        let b = with_bias.then(|| tensor::<Ad, 1>([V], 6, 1.0));
        // A different upstream gradient per row (as a mean over rows of varying weight).
        let g = tensor::<Ad, 1>([ROWS], 7, 1.0);
        let grad = |f: &dyn Fn(Tensor<Ad, 2>) -> Tensor<Ad, 1>| {
            let x = tensor::<Ad, 2>([ROWS, D], 8, 2.0).require_grad();
            let grads = (f(x.clone()) * g.clone()).sum().backward();
            let dx = x.grad(&grads).expect("x is tracked");
            dx.into_data().into_vec::<f32>().expect("f32")
        };
        let want = grad(&|x| unfused(x, w.clone(), b.clone()));
        let got = grad(&|x| linear_cross_entropy(x, w.clone(), b.clone(), targets()));
        // The same sums, the row's scale applied after the product instead of before it.
        let d = max_rel(got.clone(), want.clone());
        assert!(
            d < 1e-6,
            "bias {with_bias}: dx differs by {d} of its largest value"
        );
        // And not a gradient that ignores the row weights (the test can fail).
        let unweighted = {
            let x = tensor::<Ad, 2>([ROWS, D], 8, 2.0).require_grad();
            let grads = unfused(x.clone(), w.clone(), b.clone()).sum().backward();
            x.grad(&grads)
                .expect("x")
                .into_data()
                .into_vec::<f32>()
                .expect("f32")
        };
        assert!(max_rel(got, unweighted) > 1e-2);
    }
}

#[test]
fn a_head_that_requires_no_gradient_gets_none() {
    let x = tensor::<Ad, 2>([ROWS, D], 9, 2.0).require_grad();
    let w = tensor::<Ad, 2>([V, D], 10, 0.5);
    let b = tensor::<Ad, 1>([V], 11, 1.0);
    let grads = linear_cross_entropy(x.clone(), w.clone(), Some(b.clone()), targets())
        .sum()
        .backward();
    assert!(x.grad(&grads).is_some());
    assert!(w.grad(&grads).is_none() && b.grad(&grads).is_none());
}
