//! CPU (NdArray) tests of the quantized linear: forward = dequantize-then-matmul exactly, the
//! hand-written backward = autodiff through the dense reference = finite differences, LoRA
//! parameters on top still get gradients, and the weight round-trips through the host format.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};
use qtune_kernels::{q_linear, KernelError, QuantWeight};
use qtune_quant::{Absmax, FloatDType, QuantFormat, QuantSpec, QuantizedTensor};

type Nd = NdArray;
type Ad = Autodiff<NdArray>;

/// Deterministic pseudo-random values (an LCG, so the tests need no RNG crate).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn specs() -> Vec<QuantSpec> {
    vec![
        QuantSpec {
            format: QuantFormat::Nf4,
            blocksize: 64,
            double_quant: true,
        },
        QuantSpec {
            format: QuantFormat::Nf4,
            blocksize: 32,
            double_quant: false,
        },
        QuantSpec {
            format: QuantFormat::Fp4,
            blocksize: 64,
            double_quant: true,
        },
        QuantSpec {
            format: QuantFormat::Fp4,
            blocksize: 128,
            double_quant: false,
        },
        QuantSpec {
            format: QuantFormat::Blockwise8,
            blocksize: 256,
            double_quant: false,
        },
        QuantSpec {
            format: QuantFormat::Blockwise8,
            blocksize: 64,
            double_quant: true,
        },
    ]
}

fn quantized(out_f: usize, in_f: usize, spec: QuantSpec, seed: u64) -> QuantizedTensor {
    let w = values(out_f * in_f, seed, 0.05);
    QuantizedTensor::quantize("w", &w, &[out_f, in_f], spec, FloatDType::F32).expect("quantize")
}

fn dense<B: Backend>(q: &QuantizedTensor, dev: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(q.dequantize(), [q.shape[0], q.shape[1]]),
        dev,
    )
}

fn bits<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn dequantize_and_forward_equal_the_host_reference_bit_for_bit() {
    let dev = Default::default();
    // 24x64 (aligned) and 7x9 (odd element count: padded last nibble, short last block).
    for (out_f, in_f) in [(24, 64), (7, 9)] {
        for (k, spec) in specs().into_iter().enumerate() {
            let q = quantized(out_f, in_f, spec, 11 + k as u64);
            let w = QuantWeight::<Nd>::from_quantized(&q, &dev);
            assert_eq!(w.shape(), [out_f, in_f]);
            let reference = dense::<Nd>(&q, &dev);
            assert_eq!(
                bits(w.dequantize(DType::F32)),
                bits(reference.clone()),
                "{spec:?} {out_f}x{in_f}"
            );

            let x = Tensor::<Nd, 3>::from_data(
                TensorData::new(values(2 * 5 * in_f, 3, 1.0), [2, 5, in_f]),
                &dev,
            );
            let y = q_linear(x.clone(), &w);
            assert_eq!(y.dims(), [2, 5, out_f]);
            let y_ref = x
                .reshape([10, in_f])
                .matmul(reference.transpose())
                .reshape([2, 5, out_f]);
            assert_eq!(bits(y), bits(y_ref), "{spec:?} {out_f}x{in_f}");
        }
    }
}

#[test]
fn weight_round_trips_through_the_host_format() {
    let dev = Default::default();
    for (k, spec) in specs().into_iter().enumerate() {
        let q = quantized(16, 96, spec, 40 + k as u64);
        let w = QuantWeight::<Nd>::from_quantized(&q, &dev);
        assert_eq!(w.to_quantized(), q, "{spec:?}");
        assert_eq!(w.num_params(), 0, "a frozen base weight has no parameters");
        let expected = q.resident_bytes();
        // Ours counts codes + absmax (+ nested codes, nested absmax); qtune-quant adds the 4-byte offset.
        let diff = expected.abs_diff(w.resident_bytes());
        assert!(diff <= 4, "{spec:?}: {} vs {expected}", w.resident_bytes());
    }
}

#[test]
fn quantize_on_the_backend_equals_the_cpu_quantizer() {
    let dev = Default::default();
    for (k, spec) in specs().into_iter().enumerate() {
        let v = values(12 * 80, 70 + k as u64, 0.2);
        let expected =
            QuantizedTensor::quantize("w", &v, &[12, 80], spec, FloatDType::F32).unwrap();
        let t = Tensor::<Nd, 2>::from_data(TensorData::new(v, [12, 80]), &dev);
        let w = QuantWeight::quantize(
            "w",
            t,
            spec.format,
            spec.blocksize,
            spec.double_quant,
            FloatDType::F32,
        )
        .expect("quantize on NdArray");
        let got = w.to_quantized();
        assert_eq!(got.codes, expected.codes, "{spec:?}");
        match (&got.absmax, &expected.absmax) {
            (Absmax::Plain(a), Absmax::Plain(b)) => assert_eq!(a, b),
            (Absmax::Nested(a), Absmax::Nested(b)) => assert_eq!(a, b),
            _ => panic!("{spec:?}: absmax kinds differ"),
        }
    }
}

#[test]
fn quantize_rejects_non_finite_and_bad_blocksize() {
    let dev = Default::default();
    let mut v = values(64, 1, 1.0);
    v[5] = f32::NAN;
    let t = Tensor::<Nd, 2>::from_data(TensorData::new(v, [4, 16]), &dev);
    let err = QuantWeight::quantize("layer.0.w", t, QuantFormat::Nf4, 64, false, FloatDType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("layer.0.w"), "{err}");
    let t = Tensor::<Nd, 2>::from_data(TensorData::new(values(64, 2, 1.0), [4, 16]), &dev);
    let err = QuantWeight::quantize("layer.1.w", t, QuantFormat::Nf4, 48, false, FloatDType::F32)
        .unwrap_err();
    assert!(err.to_string().contains("layer.1.w"), "{err}");
}

#[test]
fn malformed_quantized_tensors_are_typed_errors() {
    let dev = Default::default();
    let mut q = quantized(4, 64, specs()[0], 5);
    q.shape = vec![2, 2, 64];
    let err =
        QuantWeight::<Nd>::try_from_quantized("h.0.attn.q_proj.weight", &q, &dev).unwrap_err();
    assert!(matches!(err, KernelError::NotMatrix { .. }), "{err}");
    assert!(err.to_string().contains("h.0.attn.q_proj.weight"));
    let mut q = quantized(4, 64, specs()[1], 5);
    q.codes.pop();
    let err = QuantWeight::<Nd>::try_from_quantized("w", &q, &dev).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Length {
                field: "codes",
                expected: 128,
                got: 127,
                ..
            }
        ),
        "{err}"
    );
}

/// dx of `sum(q_linear(x, W) * g)` three ways: hand-written backward, autodiff through the dense
/// reference, finite differences.
fn check_backward<B: qtune_kernels::QAutodiffBackend>(dev: &B::Device) {
    for (k, spec) in specs().into_iter().enumerate() {
        let (m, in_f, out_f) = (6, 64, 20);
        let q = quantized(out_f, in_f, spec, 100 + k as u64);
        let w = QuantWeight::<B>::from_quantized(&q, dev);
        let xv = values(m * in_f, 7, 1.0);
        let g =
            Tensor::<B, 2>::from_data(TensorData::new(values(m * out_f, 8, 1.0), [m, out_f]), dev);

        let x =
            Tensor::<B, 2>::from_data(TensorData::new(xv.clone(), [m, in_f]), dev).require_grad();
        let loss = (q_linear(x.clone(), &w) * g.clone()).sum();
        let dx = x
            .grad(&loss.backward())
            .expect("x has a grad")
            .into_data()
            .to_vec::<f32>()
            .unwrap();

        let wd = dense::<B>(&q, dev);
        let xr =
            Tensor::<B, 2>::from_data(TensorData::new(xv.clone(), [m, in_f]), dev).require_grad();
        let loss_r = (xr.clone().matmul(wd.transpose()) * g.clone()).sum();
        let dx_r = xr
            .grad(&loss_r.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let err = max_rel(&dx, &dx_r);
        assert!(err < 1e-6, "{spec:?}: dx vs dense autodiff rel err {err}");

        // Keeping the dequantized weight for the backward (checkpoint recompute) changes
        // nothing but where W comes from; `DenseUpTo` keeps it exactly up to its size.
        use qtune_kernels::LinearBackward;
        let elems = w.shape().iter().product::<usize>();
        assert!(LinearBackward::DenseUpTo(elems).keeps_dense(elems));
        assert!(!LinearBackward::DenseUpTo(elems - 1).keeps_dense(elems));
        // dx of `Σ linear(x) ⊙ g` for one way of running the linear.
        let dx_of = |linear: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>| {
            let x = Tensor::<B, 2>::from_data(TensorData::new(xv.clone(), [m, in_f]), dev)
                .require_grad();
            let y = linear(x.clone());
            assert_eq!(y.dims(), [m, w.shape()[0]]);
            x.grad(&(y * g.clone()).sum().backward())
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        for kept in [
            LinearBackward::Dense,
            LinearBackward::DenseUpTo(elems),
            LinearBackward::DenseUpTo(elems - 1),
        ] {
            let err = max_rel(&dx_of(&|x| qtune_kernels::q_linear_with(x, &w, kept)), &dx);
            assert!(
                err < 1e-6,
                "{spec:?}: {kept:?} dx vs quantized dx rel err {err}"
            );
            // An output nobody reads (a recompute's block-output linear): same gradient path.
            let err = max_rel(
                &dx_of(&|x| qtune_kernels::q_linear_unread(x, &w, kept)),
                &dx,
            );
            assert!(
                err < 1e-6,
                "{spec:?}: unread {kept:?} dx vs quantized dx rel err {err}"
            );
        }

        // Central differences on a few coordinates (the loss is linear in x: only rounding).
        let inner = w.clone().valid();
        let ginner = g.clone().inner();
        let loss_at = |v: &[f32]| -> f32 {
            let xi = Tensor::<B::InnerBackend, 2>::from_data(
                TensorData::new(v.to_vec(), [m, in_f]),
                dev,
            );
            (q_linear(xi, &inner) * ginner.clone())
                .sum()
                .into_scalar()
                .to_f32_lossy()
        };
        let h = 1e-2f32;
        for idx in [0, 17, 130, m * in_f - 1] {
            let (mut p, mut n) = (xv.clone(), xv.clone());
            p[idx] += h;
            n[idx] -= h;
            let fd = (loss_at(&p) - loss_at(&n)) / (2.0 * h);
            assert!(
                (fd - dx[idx]).abs() <= 2e-2 * dx[idx].abs().max(0.1),
                "{spec:?} [{idx}]: fd {fd} vs dx {}",
                dx[idx]
            );
        }
    }
}

trait ToF32 {
    fn to_f32_lossy(self) -> f32;
}
impl<E: burn::tensor::ElementConversion> ToF32 for E {
    fn to_f32_lossy(self) -> f32 {
        self.elem()
    }
}

#[test]
fn backward_matches_dense_autodiff_and_finite_differences() {
    check_backward::<Ad>(&Default::default());
}

#[test]
fn backward_works_under_balanced_checkpointing() {
    check_backward::<Autodiff<NdArray, BalancedCheckpointing>>(&Default::default());
}

#[test]
fn lora_parameters_on_top_get_the_dense_reference_grads() {
    let dev = Default::default();
    let (m, in_f, out_f, r) = (5, 64, 32, 4);
    let q = quantized(out_f, in_f, specs()[0], 9);
    let w = QuantWeight::<Ad>::from_quantized(&q, &dev);
    let a = Param::from_tensor(Tensor::<Ad, 2>::random(
        [r, in_f],
        Distribution::Normal(0.0, 0.1),
        &dev,
    ));
    let b = Param::from_tensor(Tensor::<Ad, 2>::random(
        [out_f, r],
        Distribution::Normal(0.0, 0.1),
        &dev,
    ));
    let x = Tensor::<Ad, 2>::random([m, in_f], Distribution::Normal(0.0, 1.0), &dev);
    let target = Tensor::<Ad, 2>::random([m, out_f], Distribution::Normal(0.0, 1.0), &dev);
    let lora = |base: Tensor<Ad, 2>| {
        base + x
            .clone()
            .matmul(a.val().transpose())
            .matmul(b.val().transpose())
            .mul_scalar(2.0)
    };

    let y = lora(q_linear(x.clone(), &w));
    let grads = (y - target.clone()).powi_scalar(2).sum().backward();
    let (ga, gb) = (
        a.val().grad(&grads).expect("A grad"),
        b.val().grad(&grads).expect("B grad"),
    );

    let y_ref = lora(x.clone().matmul(dense::<Ad>(&q, &dev).transpose()));
    let grads_ref = (y_ref - target).powi_scalar(2).sum().backward();
    let (ga_r, gb_r) = (
        a.val().grad(&grads_ref).unwrap(),
        b.val().grad(&grads_ref).unwrap(),
    );
    let ea = max_rel(
        &ga.into_data().to_vec::<f32>().unwrap(),
        &ga_r.into_data().to_vec::<f32>().unwrap(),
    );
    let eb = max_rel(
        &gb.into_data().to_vec::<f32>().unwrap(),
        &gb_r.into_data().to_vec::<f32>().unwrap(),
    );
    assert!(ea < 1e-5 && eb < 1e-5, "LoRA grads differ: A {ea}, B {eb}");
}

#[test]
fn select_rows_is_select_and_its_gradient_lands_on_the_rows() {
    let dev = Default::default();
    let (n, d, rows) = (7usize, 5usize, [0i64, 3, 4, 6]);
    let xv: Vec<f32> = (0..n * d).map(|i| i as f32 * 0.25 - 3.0).collect();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(xv.clone(), [n, d]), &dev).require_grad();
    let y = qtune_kernels::select_rows(x.clone(), &rows);
    let idx = Tensor::<Ad, 1, burn::tensor::Int>::from_data(
        TensorData::new(rows.to_vec(), [rows.len()]),
        &dev,
    );
    let want = Tensor::<Ad, 2>::from_data(TensorData::new(xv, [n, d]), &dev).select(0, idx);
    assert_eq!(
        y.clone().into_data().to_vec::<f32>().unwrap(),
        want.into_data().to_vec::<f32>().unwrap()
    );
    let gv: Vec<f32> = (0..rows.len() * d).map(|i| 1.0 + i as f32).collect();
    let g = Tensor::<Ad, 2>::from_data(TensorData::new(gv.clone(), [rows.len(), d]), &dev);
    let dx = x
        .grad(&(y * g).sum().backward())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    for r in 0..n {
        let at = rows.iter().position(|&s| s as usize == r);
        for c in 0..d {
            let want = at.map_or(0.0, |i| gv[i * d + c]);
            assert_eq!(dx[r * d + c], want, "row {r} col {c}");
        }
    }
}

#[test]
#[should_panic(expected = "strictly increasing")]
fn select_rows_refuses_repeated_rows() {
    let x = Tensor::<Ad, 2>::zeros([4, 2], &Default::default());
    qtune_kernels::select_rows(x, &[1, 1]);
}

/// A sum nobody reads (a recompute's block output): without autodiff it is the sum; under
/// autodiff every part, two or three of them, gets the gradient `+` would give it, whether the
/// parts are tracked or not, also when one part feeds another.
#[test]
fn sum_unread_hands_every_part_the_sums_gradient() {
    let dev = Default::default();
    let t = |seed: u64| {
        let mut s = seed;
        let v: Vec<f32> = (0..12)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        TensorData::new(v, [3, 4])
    };
    let plain: Vec<Tensor<Nd, 2>> = (0..3).map(|i| Tensor::from_data(t(i), &dev)).collect();
    let want = plain[0].clone() + plain[1].clone() + plain[2].clone();
    let got = qtune_kernels::sum_unread(plain.clone());
    assert_eq!(got.into_data(), want.into_data());

    let g = Tensor::<Ad, 2>::from_data(t(7), &dev);
    for n in [2usize, 3] {
        for tracked in [
            [true, true, true],
            [false, true, false],
            [true, false, true],
        ] {
            // Reference: `+`, then the same loss through a read of the sum's gradient only.
            let grads_of = |unread: bool| -> Vec<Option<Vec<f32>>> {
                let leaves: Vec<Tensor<Ad, 2>> = (0..n)
                    .map(|i| {
                        let x = Tensor::<Ad, 2>::from_data(t(i as u64), &dev);
                        if tracked[i] {
                            x.require_grad()
                        } else {
                            x
                        }
                    })
                    .collect();
                // The last part also depends on the first (as GPT-J's attention output on x).
                let mut parts = leaves.clone();
                parts[n - 1] = parts[n - 1].clone() * leaves[0].clone();
                let s = if unread {
                    qtune_kernels::sum_unread(parts)
                } else {
                    parts.into_iter().reduce(|a, b| a + b).unwrap()
                };
                let grads = (s * g.clone()).sum().backward();
                leaves
                    .iter()
                    .map(|x| {
                        x.grad(&grads)
                            .map(|d| d.into_data().to_vec::<f32>().unwrap())
                    })
                    .collect()
            };
            assert_eq!(
                grads_of(true),
                grads_of(false),
                "{n} parts, tracked {tracked:?}"
            );
        }
    }
}

/// A dense linear nobody reads (a recompute's block-output linear over a frozen dense weight):
/// without autodiff it is `linear_t` bit for bit; under autodiff `x`'s gradient is `linear_t`'s
/// bit for bit, also through a 3-D input; a weight that wants a gradient still gets
/// `linear_t`'s.
#[test]
fn linear_t_unread_keeps_the_input_gradient() {
    let dev = Default::default();
    let (b, t, d_in, d_out) = (2usize, 3usize, 8usize, 5usize);
    let xv = values(b * t * d_in, 41, 1.0);
    let wv = values(d_out * d_in, 42, 0.5);
    let gv = values(b * t * d_out, 43, 1.0);
    let w = Tensor::<Nd, 2>::from_data(TensorData::new(wv.clone(), [d_out, d_in]), &dev);
    let x = Tensor::<Nd, 3>::from_data(TensorData::new(xv.clone(), [b, t, d_in]), &dev);
    assert_eq!(
        qtune_kernels::linear_t_unread(x.clone(), w.clone()).into_data(),
        qtune_kernels::linear_t(x, w).into_data()
    );
    let g = Tensor::<Ad, 3>::from_data(TensorData::new(gv, [b, t, d_out]), &dev);
    let grads_of = |unread: bool, w_grad: bool| {
        let x = Tensor::<Ad, 3>::from_data(TensorData::new(xv.clone(), [b, t, d_in]), &dev)
            .require_grad();
        let w = Tensor::<Ad, 2>::from_data(TensorData::new(wv.clone(), [d_out, d_in]), &dev);
        let w = if w_grad { w.require_grad() } else { w };
        let y = if unread {
            qtune_kernels::linear_t_unread(x.clone(), w.clone())
        } else {
            qtune_kernels::linear_t(x.clone(), w.clone())
        };
        assert_eq!(y.dims(), [b, t, d_out]);
        let grads = (y * g.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let dw = w
            .grad(&grads)
            .map(|d| d.into_data().to_vec::<f32>().unwrap());
        (dx, dw)
    };
    assert_eq!(grads_of(true, false), grads_of(false, false));
    let (dx, dw) = grads_of(true, true);
    assert!(dw.is_some(), "a weight that wants a gradient gets one");
    assert_eq!((dx, dw), grads_of(false, true));
}
