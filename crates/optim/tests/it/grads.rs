//! Global-norm clipping and token-normalized accumulation on real autodiff gradients.

use crate::common::*;
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use qtune_optim::{clip_grad_norm, OptimError, TokenAccumulator, CLIP_EPS};

/// A LoRA-shaped module: two trainable matrices and one frozen one.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    pub frozen: Param<Tensor<B, 2>>,
}

fn det(n: usize, seed: u32) -> Vec<f32> {
    // A small deterministic generator (xorshift) so the tests need no RNG crate.
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn mat(rows: usize, cols: usize, seed: u32) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(det(rows * cols, seed), [rows, cols]),
        &Default::default(),
    )
}

fn lora() -> Lora<B> {
    Lora {
        a: Param::from_tensor(mat(4, 6, 1)),
        b: Param::from_tensor(mat(6, 3, 2)),
        frozen: Param::from_tensor(mat(4, 3, 3)).set_require_grad(false),
    }
}

/// Summed squared-error loss over the tokens `x` [n, 4] with targets `t` [n, 3].
fn loss_sum(m: &Lora<B>, x: Tensor<B, 2>, t: Tensor<B, 2>) -> Tensor<B, 1> {
    let y = x.clone().matmul(m.a.val()).matmul(m.b.val()) + x.matmul(m.frozen.val());
    (y - t).powi_scalar(2).sum()
}

fn grad_values(m: &Lora<B>, g: &GradientsParams) -> (Vec<f32>, Vec<f32>) {
    let get = |id| values(g.get::<Inner, 2>(id).expect("grad"));
    (get(m.a.id), get(m.b.id))
}

#[test]
fn clipping_uses_the_global_norm_over_all_parameters() {
    let m = lora();
    let x = mat(7, 4, 10);
    let t = mat(7, 3, 11).mul_scalar(5.0);
    let mut grads = GradientsParams::from_grads(loss_sum(&m, x, t).backward(), &m);
    assert!(
        grads.get::<Inner, 2>(m.frozen.id).is_none(),
        "frozen param has no grad"
    );
    let (ga, gb) = grad_values(&m, &grads);
    let norm = ga
        .iter()
        .chain(&gb)
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let max_norm = norm / 3.0;

    let out = clip_grad_norm(&m, &mut grads, max_norm);
    assert!(
        (out.total_norm - norm).abs() <= 1e-6 * norm,
        "norm {} vs {norm}",
        out.total_norm
    );
    let coef = (max_norm / (out.total_norm + CLIP_EPS)) as f32;
    assert_eq!(out.scale, coef as f64);
    let (ca, cb) = grad_values(&m, &grads);
    // Every tensor is scaled by the same factor, bit for bit as g * coef in f32.
    for (clipped, orig) in [(&ca, &ga), (&cb, &gb)] {
        for (c, o) in clipped.iter().zip(orig.iter()) {
            assert_eq!(c.to_bits(), (o * coef).to_bits());
        }
    }
    let new_norm = ca
        .iter()
        .chain(&cb)
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        (new_norm - max_norm).abs() <= 1e-5 * max_norm,
        "clipped norm {new_norm} vs {max_norm}"
    );
    // Per-tensor clipping (Burn's GradientClipping::Norm) would give each tensor norm max_norm.
    let na = ga.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let nca = ca.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!(
        (nca - na * coef as f64).abs() <= 1e-5 * na,
        "A keeps its share of the norm"
    );
}

#[test]
fn no_clipping_below_the_threshold_or_for_non_finite_norms() {
    let m = lora();
    let mut grads =
        GradientsParams::from_grads(loss_sum(&m, mat(5, 4, 20), mat(5, 3, 21)).backward(), &m);
    let before = grad_values(&m, &grads);
    let out = clip_grad_norm(&m, &mut grads, 1e9);
    assert_eq!(out.scale, 1.0);
    assert_eq!(grad_values(&m, &grads), before, "untouched below max_norm");
    let out = clip_grad_norm(&m, &mut grads, 0.0);
    assert_eq!(
        (out.scale, grad_values(&m, &grads)),
        (1.0, before.clone()),
        "max_norm 0 disables"
    );

    let mut nan = GradientsParams::new();
    nan.register::<Inner, 2>(
        m.a.id,
        Tensor::from_data(
            TensorData::new(vec![f32::NAN; 24], [4, 6]),
            &Default::default(),
        ),
    );
    let out = clip_grad_norm(&m, &mut nan, 1.0);
    assert!(out.total_norm.is_nan() && out.scale == 1.0, "{out:?}");
}

#[test]
fn accumulation_divides_summed_gradients_by_total_tokens() {
    let m = lora();
    let (x, t) = (mat(7, 4, 30), mat(7, 3, 31));
    // Reference: one backward of the mean over all 7 target tokens.
    let full = GradientsParams::from_grads(
        loss_sum(&m, x.clone(), t.clone())
            .div_scalar(7.0)
            .backward(),
        &m,
    );
    let (fa, fb) = grad_values(&m, &full);

    // Micro-batches of 2 and 5 tokens.
    let mut acc = TokenAccumulator::new();
    let mut mean_of_means: Vec<Vec<f32>> = Vec::new();
    for range in [0..2, 2..7] {
        let n = range.len();
        let (xm, tm) = (
            x.clone().slice([range.clone(), 0..4]),
            t.clone().slice([range, 0..3]),
        );
        let g = GradientsParams::from_grads(loss_sum(&m, xm, tm).backward(), &m);
        let (ga, _) = grad_values(&m, &g);
        mean_of_means.push(ga.iter().map(|v| v / n as f32 / 2.0).collect());
        acc.accumulate(&m, g, n);
    }
    assert_eq!((acc.tokens(), acc.micro_batches()), (7, 2));
    let grads = acc.finish(&m).expect("tokens seen");
    let (aa, ab) = grad_values(&m, &grads);
    assert!(
        norm_rel(&aa, &fa) <= 1e-6 && norm_rel(&ab, &fb) <= 1e-6,
        "{} {}",
        norm_rel(&aa, &fa),
        norm_rel(&ab, &fb)
    );
    // The mean of per-micro-batch means weights the 2-token batch's tokens 2.5x more: far off.
    let mom: Vec<f32> = mean_of_means[0]
        .iter()
        .zip(&mean_of_means[1])
        .map(|(a, b)| a + b)
        .collect();
    assert!(
        norm_rel(&mom, &fa) > 1e-2,
        "mean of means should differ: {}",
        norm_rel(&mom, &fa)
    );
    assert_eq!(acc.tokens(), 0, "finish resets");
}

#[test]
fn accumulation_without_tokens_is_an_error() {
    let m = lora();
    let mut acc = TokenAccumulator::new();
    let g = GradientsParams::from_grads(loss_sum(&m, mat(2, 4, 40), mat(2, 3, 41)).backward(), &m);
    acc.accumulate(&m, g, 0);
    match acc.finish(&m) {
        Err(OptimError::NoTokens { micro_batches: 1 }) => {}
        other => panic!("expected NoTokens, got {:?}", other.map(|g| g.len())),
    }
}

/// The whole step (summed loss → accumulate → clip → optimizer) on real autodiff gradients:
/// parameters stay trainable after each update, the frozen one never moves, the loss falls.
#[test]
fn a_few_real_training_steps_reduce_the_loss() {
    use qtune_optim::{OptimKind, Optimizer, OptimizerConfig};
    for optim_kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        let cfg = OptimizerConfig {
            optim: optim_kind,
            min_8bit_size: 16,
            ..OptimizerConfig::default()
        };
        let mut optim = Optimizer::<B>::new(cfg).expect("config");
        let mut m = lora();
        let frozen = values(m.frozen.val());
        let (x, t) = (mat(16, 4, 50), mat(16, 3, 51));
        let mut losses = Vec::new();
        for _ in 0..30 {
            let mut acc = TokenAccumulator::new();
            for r in [0..6, 6..16] {
                let (xm, tm) = (
                    x.clone().slice([r.clone(), 0..4]),
                    t.clone().slice([r.clone(), 0..3]),
                );
                let loss = loss_sum(&m, xm, tm);
                losses.push(values(loss.clone())[0] as f64);
                acc.accumulate(
                    &m,
                    GradientsParams::from_grads(loss.backward(), &m),
                    r.len(),
                );
            }
            let mut grads = acc.finish(&m).expect("tokens");
            assert_eq!(
                grads.len(),
                2,
                "{optim_kind:?}: A and B still get gradients"
            );
            clip_grad_norm(&m, &mut grads, 1.0);
            m = optim.step(1e-2, m, grads).expect("step");
        }
        let first: f64 = losses[..2].iter().sum();
        let last: f64 = losses[losses.len() - 2..].iter().sum();
        println!("{optim_kind:?}: loss {first:.4} -> {last:.4} over 30 steps");
        assert!(last < 0.8 * first, "{optim_kind:?}: loss {first} -> {last}");
        assert_eq!(
            values(m.frozen.val()),
            frozen,
            "{optim_kind:?}: frozen weight untouched"
        );
    }
}

/// `Optimizer::step_normalized` = normalize_by_tokens + clip_grad_norm + step, fused: without
/// clipping bit for bit; with clipping the norm (and so the factor) may differ in its last bits
/// (one sum of squares per group instead of per tensor). A non-finite norm steps nothing.
#[test]
fn step_normalized_equals_normalize_clip_step() {
    use qtune_optim::{normalize_by_tokens, OptimKind, Optimizer, OptimizerConfig};
    let x = mat(7, 4, 10);
    let t = mat(7, 3, 11).mul_scalar(5.0);
    let tokens = 7u64;
    for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        for max_norm in [1e9, 0.05] {
            let cfg = OptimizerConfig {
                optim: kind,
                ..OptimizerConfig::default()
            };
            let run = |fused: bool| {
                let mut opt = Optimizer::<B>::new(cfg).unwrap();
                let mut m = lora();
                let mut norms = Vec::new();
                for _ in 0..3 {
                    let raw = GradientsParams::from_grads(
                        loss_sum(&m, x.clone(), t.clone()).backward(),
                        &m,
                    );
                    if fused {
                        let (next, n) = opt
                            .step_normalized(1e-2, m, raw, tokens, 1, max_norm)
                            .unwrap();
                        norms.push(n.total_norm);
                        m = next;
                    } else {
                        let mut g = normalize_by_tokens::<B, _>(&m, raw, tokens, 1).unwrap();
                        norms.push(clip_grad_norm(&m, &mut g, max_norm).total_norm);
                        m = opt.step(1e-2, m, g).unwrap();
                    }
                }
                (values(m.a.val()), values(m.b.val()), norms)
            };
            let ((a1, b1, n1), (a2, b2, n2)) = (run(true), run(false));
            for (x, y) in n1.iter().zip(&n2) {
                assert!((x - y).abs() <= 1e-6 * y, "{kind:?} norm {x} vs {y}");
            }
            if max_norm > 1.0 {
                assert_eq!((&a1, &b1), (&a2, &b2), "{kind:?} unclipped");
            } else {
                for (x, y) in a1.iter().chain(&b1).zip(a2.iter().chain(&b2)) {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
                        "{kind:?} {x} vs {y}"
                    );
                }
            }
        }
    }
    // A NaN gradient: the module comes back as it was, with the non-finite norm.
    let mut opt = Optimizer::<B>::new(OptimizerConfig::default()).unwrap();
    let m = lora();
    let before = values(m.a.val());
    let raw = GradientsParams::from_grads(
        loss_sum(&m, x.clone(), t.mul_scalar(f32::NAN)).backward(),
        &m,
    );
    let (m, n) = opt.step_normalized(1e-2, m, raw, tokens, 1, 1.0).unwrap();
    assert!(n.total_norm.is_nan());
    assert_eq!(values(m.a.val()), before);
    assert_eq!(opt.num_params(), 0, "no state was created");
    let e = opt
        .step_normalized(1e-2, m, GradientsParams::new(), 0, 2, 1.0)
        .err()
        .unwrap();
    assert!(
        matches!(e, OptimError::NoTokens { micro_batches: 2 }),
        "{e}"
    );
}
