//! Unit tests of [`crate::Linear`] on the CPU backends.

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use qtune_kernels::QuantWeight;
use qtune_quant::{FloatDType, QuantFormat, QuantSpec, QuantizedTensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Linear, Pass};
use crate::{LoraConfig, TargetModules};

type Nd = NdArray<f32>;
type Ad = Autodiff<Nd>;

fn cfg(r: usize, dropout: f64) -> LoraConfig {
    LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        lora_dropout: dropout,
        target_modules: TargetModules::AllLinear,
    }
}

fn vec2(t: Tensor<Nd, 2>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn dense_forward_is_x_wt_plus_b() {
    let dev = Default::default();
    let w = Tensor::<Nd, 2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]),
        &dev,
    );
    let b = Tensor::<Nd, 1>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0], [3]), &dev);
    let lin = Linear::dense(w, Some(b));
    assert_eq!(lin.shape(), [3, 2]);
    let x = Tensor::<Nd, 2>::from_data(TensorData::new(vec![1.0f32, -1.0], [1, 2]), &dev);
    // [1-2, 3-4, 5-6] + b
    assert_eq!(vec2(lin.forward(x)), vec![-0.5, -2.0, 1.0]);
}

#[test]
fn fresh_adapter_is_identity_and_a_is_kaiming_bounded() {
    let dev = Default::default();
    let w = Tensor::<Nd, 2>::random([8, 32], Distribution::Normal(0.0, 1.0), &dev);
    let lin = Linear::dense(w, None);
    let x = Tensor::<Nd, 3>::random([2, 3, 32], Distribution::Normal(0.0, 1.0), &dev);
    let before = lin
        .forward(x.clone())
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let lin = lin.attach_lora(&cfg(4, 0.0), &mut ChaCha8Rng::seed_from_u64(7));
    let after = lin.forward(x).into_data().into_vec::<f32>().unwrap();
    assert_eq!(before, after, "B = 0 must leave the output unchanged");
    let lora = lin.lora.as_ref().unwrap();
    assert_eq!(lora.scaling, 2.0);
    let a = vec2(lora.lora_a.val());
    let bound = 1.0 / (32f32).sqrt();
    assert_eq!(a.len(), 4 * 32);
    assert!(
        a.iter().all(|v| v.abs() <= bound),
        "A outside U(-1/sqrt(in), 1/sqrt(in))"
    );
    // Spread over the interval, not a constant.
    assert!(a.iter().cloned().fold(f32::MIN, f32::max) > 0.8 * bound);
    assert!(vec2(lora.lora_b.val()).iter().all(|v| *v == 0.0));
}

#[test]
fn lora_update_matches_manual_and_only_a_b_get_grads() {
    let dev = Default::default();
    let w = Tensor::<Ad, 2>::random([6, 5], Distribution::Normal(0.0, 1.0), &dev);
    let bias = Tensor::<Ad, 1>::random([6], Distribution::Normal(0.0, 1.0), &dev);
    let mut lin = Linear::dense(w.clone(), Some(bias.clone()))
        .attach_lora(&cfg(2, 0.0), &mut ChaCha8Rng::seed_from_u64(1));
    let b_val = Tensor::<Ad, 2>::random([6, 2], Distribution::Normal(0.0, 1.0), &dev);
    let mut lora = lin.take_adapter().unwrap();
    lora.lora_b = burn::module::Param::from_tensor(b_val.clone());
    let lin = lin.with_adapter(lora);
    let x = Tensor::<Ad, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &dev);
    let y = lin.forward(x.clone());
    let a_val = lin.lora.as_ref().unwrap().lora_a.val();
    let manual = x.clone().matmul(w.transpose())
        + bias.unsqueeze::<2>()
        + x.matmul(a_val.transpose())
            .matmul(b_val.transpose())
            .mul_scalar(2.0);
    let d = max_abs_diff(
        &y.clone().inner().into_data().into_vec::<f32>().unwrap(),
        &manual.inner().into_data().into_vec::<f32>().unwrap(),
    );
    assert!(d < 1e-5, "max abs diff {d}");
    let grads = y.sum().backward();
    let lora = lin.lora.as_ref().unwrap();
    assert!(lora.lora_a.val().grad(&grads).is_some());
    assert!(lora.lora_b.val().grad(&grads).is_some());
    let crate::LinearBase::Dense(wp) = &lin.base else {
        unreachable!()
    };
    assert!(
        wp.val().grad(&grads).is_none(),
        "base weight must be frozen"
    );
    assert!(
        lin.bias.as_ref().unwrap().val().grad(&grads).is_none(),
        "bias must be frozen"
    );
    // Two trainable tensors in the whole module.
    assert_eq!(lin.num_params(), 6 * 5 + 6 + 2 * 5 + 6 * 2);
    let _inner: Linear<Nd> = lin.valid();
}

#[test]
fn dropout_mask_is_reproducible_from_its_seed() {
    let dev = Default::default();
    let w = Tensor::<Nd, 2>::zeros([4, 64], &dev);
    let mut lin =
        Linear::dense(w, None).attach_lora(&cfg(4, 0.5), &mut ChaCha8Rng::seed_from_u64(3));
    let mut lora = lin.take_adapter().unwrap();
    lora.lora_b = burn::module::Param::from_tensor(Tensor::ones([4, 4], &dev));
    let lin = lin.with_adapter(lora);
    let x = Tensor::<Nd, 2>::ones([8, 64], &dev);
    let a = vec2(lin.forward_with(x.clone(), Pass::dropout(42)));
    let b = vec2(lin.forward_with(x.clone(), Pass::dropout(42)));
    let c = vec2(lin.forward_with(x.clone(), Pass::dropout(43)));
    let eval = vec2(lin.forward(x));
    assert_eq!(a, b, "same seed, same mask");
    assert_ne!(a, c, "another seed, another mask");
    assert_ne!(a, eval, "dropout is active with a seed");
}

#[test]
fn quantized_forward_equals_dequantize_then_matmul() {
    let dev = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let values: Vec<f32> = (0..16 * 128)
        .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
        .collect();
    let spec = QuantSpec {
        format: QuantFormat::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let q = QuantizedTensor::quantize("w", &values, &[16, 128], spec, FloatDType::F32).unwrap();
    let dense_w = Tensor::<Nd, 2>::from_data(TensorData::new(q.dequantize(), [16, 128]), &dev);
    let qlin = Linear::quantized(QuantWeight::from_quantized(&q, &dev), None);
    assert!(qlin.is_quantized());
    assert_eq!(qlin.shape(), [16, 128]);
    let x = Tensor::<Nd, 3>::random([2, 3, 128], Distribution::Normal(0.0, 1.0), &dev);
    let y = qlin
        .forward(x.clone())
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let r = Linear::dense(dense_w.clone(), None)
        .forward(x)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let d = max_abs_diff(&y, &r);
    assert!(d < 1e-5, "max abs diff {d}");
    assert_eq!(vec2(qlin.base_weight(DType::F32)), vec2(dense_w));
}

#[test]
fn forward_plus_adds_the_branches_for_one_row_and_many() {
    // `forward_plus(x, adds)` = `forward(x) + adds…`: bit for bit for several rows (the same tensor
    // adds), and for one row of a quantized layer (bias and addends summed with the product
    // first, then the adapter) up to rounding.
    let dev = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let values: Vec<f32> = (0..24 * 64)
        .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
        .collect();
    let spec = QuantSpec {
        format: QuantFormat::Nf4,
        blocksize: 64,
        double_quant: false,
    };
    let q = QuantizedTensor::quantize("w", &values, &[24, 64], spec, FloatDType::F32).unwrap();
    let bias = Tensor::<Nd, 1>::random([24], Distribution::Normal(0.0, 1.0), &dev);
    let lin = Linear::quantized(QuantWeight::from_quantized(&q, &dev), Some(bias))
        .attach_lora(&cfg(4, 0.0), &mut rng);
    // A non-zero B, so the adapter contributes.
    let mut lin = lin;
    let ad = lin.take_adapter().unwrap();
    let b = Tensor::<Nd, 2>::random([24, 4], Distribution::Normal(0.0, 0.5), &dev);
    let lin = lin.with_adapter(crate::LoraAdapter::from_tensors(
        ad.lora_a.val(),
        b,
        2.0,
        0.0,
    ));
    for rows in [1usize, 3] {
        let x = Tensor::<Nd, 3>::random([1, rows, 64], Distribution::Normal(0.0, 1.0), &dev);
        let a1 = Tensor::<Nd, 3>::random([1, rows, 24], Distribution::Normal(0.0, 1.0), &dev);
        let a2 = Tensor::<Nd, 3>::random([1, rows, 24], Distribution::Normal(0.0, 1.0), &dev);
        let want = (lin.forward(x.clone()) + a1.clone() + a2.clone())
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let got = lin
            .forward_plus(x, Pass::default(), vec![a1, a2])
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let d = max_abs_diff(&got, &want);
        if rows == 1 {
            assert!(d < 1e-5, "one row: max abs diff {d}");
        } else {
            assert_eq!(got, want, "{rows} rows");
        }
    }
}

#[test]
fn forward_parts_equals_each_forward_with() {
    // Three quantized linears of one input (q, k, v), with bias and adapters on some: the
    // outputs of `forward_parts` are each layer's `forward_with` bit for bit, for one row (the
    // batched base products) and for several (one forward each), with and without dropout.
    let dev = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let spec = QuantSpec {
        format: QuantFormat::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let mut layer = |out: usize, bias: bool, lora: bool| {
        let values: Vec<f32> = (0..out * 64)
            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
            .collect();
        let q = QuantizedTensor::quantize("w", &values, &[out, 64], spec, FloatDType::F32).unwrap();
        let b = bias.then(|| Tensor::<Nd, 1>::random([out], Distribution::Normal(0.0, 1.0), &dev));
        let lin = Linear::quantized(QuantWeight::from_quantized(&q, &dev), b);
        if !lora {
            return lin;
        }
        let mut lin = lin.attach_lora(&cfg(4, 0.1), &mut rng);
        let a = lin.take_adapter().unwrap().lora_a.val();
        let bm = Tensor::<Nd, 2>::random([out, 4], Distribution::Normal(0.0, 0.5), &dev);
        lin.with_adapter(crate::LoraAdapter::from_tensors(a, bm, 2.0, 0.1))
    };
    let (q, k, v) = (
        layer(24, true, true),
        layer(16, false, false),
        layer(16, true, true),
    );
    for rows in [1usize, 3] {
        for seed in [None, Some(7u64)] {
            let x = Tensor::<Nd, 3>::random([1, rows, 64], Distribution::Normal(0.0, 1.0), &dev);
            let pass = |s: u64| Pass {
                dropout_seed: seed.map(|d| d + s),
                ..Pass::default()
            };
            let got =
                Linear::forward_parts([(&q, pass(0)), (&k, pass(1)), (&v, pass(2))], x.clone());
            for (i, (l, y)) in [&q, &k, &v].into_iter().zip(got).enumerate() {
                let want = l.forward_with(x.clone(), pass(i as u64));
                assert_eq!(
                    y.into_data().into_vec::<f32>().unwrap(),
                    want.into_data().into_vec::<f32>().unwrap(),
                    "layer {i}, {rows} rows, dropout seed {seed:?}"
                );
            }
        }
    }
}
