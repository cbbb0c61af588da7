//! `sum_all` (a sum of every value in an order fixed by the length) on the CPU: the sum of
//! every length around its row size, empty included, equals the exact sum; under autodiff every
//! value gets the gradient 1, as `Tensor::sum`'s.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use qtune_kernels::sum_all;

type Nd = NdArray;

/// Small integers (exact in f32 whatever the order of the additions).
fn ints(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect()
}

#[test]
fn the_sum_of_every_length_is_exact() {
    for n in [0usize, 1, 5, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 7] {
        let v = ints(n);
        let want: f32 = v.iter().sum();
        let t = Tensor::<Nd, 1>::from_data(TensorData::new(v, [n]), &Default::default());
        let got = sum_all(t).into_data().to_vec::<f32>().expect("f32");
        assert_eq!(got, vec![want], "n = {n}");
    }
    // Any rank: [2, 3, 4099].
    let v = ints(2 * 3 * 4099);
    let want: f32 = v.iter().sum();
    let t = Tensor::<Nd, 3>::from_data(TensorData::new(v, [2, 3, 4099]), &Default::default());
    assert_eq!(
        sum_all(t).into_data().to_vec::<f32>().expect("f32"),
        vec![want]
    );
}

#[test]
fn every_value_gets_the_gradient() {
    type Ad = Autodiff<NdArray>;
    let n = 2 * 4096 + 3;
    let x = Tensor::<Ad, 1>::from_data(TensorData::new(ints(n), [n]), &Default::default())
        .require_grad();
    let grads = (sum_all(x.clone()) * 3.0).backward();
    let g = x
        .grad(&grads)
        .expect("tracked")
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    assert_eq!(g, vec![3.0; n]);
}
