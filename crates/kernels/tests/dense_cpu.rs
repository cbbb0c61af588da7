//! The dense custom ops on the CPU reference.
//! - `qtune_kernels::matmul` (every dense GEMM of the model: attention, LoRA, dense bases):
//!   forward equals Burn's matmul for all four transpose combinations, and its hand-written
//!   backward gives the same gradients as autodiff through Burn's matmul — for both inputs, and
//!   only for the inputs that require them.
//! - `gelu_new`, `attention_softmax`, `attention`, `layer_norm`, `rotary`: forward and
//!   hand-written backward equal autodiff through the same formula written with Burn ops;
//!   grouped-query `attention` (fewer kv heads) equals `attention` on the repeated kv heads.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Tensor, TensorData};
use qtune_kernels::{gelu_new, linear_t, matmul};

type Ad = Autodiff<NdArray>;

fn tensor(shape: [usize; 4], seed: u64) -> Tensor<Ad, 4> {
    let n: usize = shape.iter().product();
    let v = qtune_testkit::values(n, seed, 1.0);
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn max_diff(a: Tensor<NdArray, 4>, b: Tensor<NdArray, 4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.into_data().into_vec::<f32>().unwrap();
    let b = b.into_data().into_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matmul_forward_and_grads_match_burn_for_all_transposes() {
    let (m, k, n) = (5, 7, 3);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let sa = if ta { [2, 3, k, m] } else { [2, 3, m, k] };
        let sb = if tb { [2, 3, n, k] } else { [2, 3, k, n] };
        let a = tensor(sa, 1).require_grad();
        let b = tensor(sb, 2).require_grad();
        let w = tensor([2, 3, m, n], 3); // weights the output so every dc entry differs

        let ours = matmul(a.clone(), b.clone(), ta, tb, DType::F32);
        let op = |t: Tensor<Ad, 4>, tr: bool| if tr { t.swap_dims(2, 3) } else { t };
        let reference = op(a.clone(), ta).matmul(op(b.clone(), tb));
        assert_eq!(ours.dims(), [2, 3, m, n]);
        let fwd = max_diff(ours.clone().inner(), reference.clone().inner());
        assert!(fwd < 1e-5, "forward ta={ta} tb={tb}: {fwd}");

        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (reference * w).sum().backward();
        let da = max_diff(a.grad(&g1).unwrap(), a.grad(&g2).unwrap());
        let db = max_diff(b.grad(&g1).unwrap(), b.grad(&g2).unwrap());
        assert!(da < 1e-5 && db < 1e-5, "grads ta={ta} tb={tb}: {da} {db}");
    }
}

#[test]
fn matmul_frozen_input_gets_no_gradient() {
    let a = tensor([1, 1, 4, 6], 4).require_grad();
    let frozen = tensor([1, 1, 5, 6], 5);
    let y = matmul(a.clone(), frozen.clone(), false, true, DType::F32);
    let g = y.sum().backward();
    assert!(frozen.grad(&g).is_none());
    let da = a.grad(&g).expect("a requires grad");
    // d(sum(a·fᵀ))/da = 1·f summed over f's rows, the same for every row of a.
    let expect = frozen.inner().sum_dim(2).expand([1, 1, 4, 6]);
    assert!(max_diff(da, expect) < 1e-5);
}

#[test]
fn linear_t_is_x_times_w_transposed() {
    let x = tensor([1, 2, 3, 8], 6);
    let w = tensor([1, 1, 4, 8], 7);
    let w2: Tensor<Ad, 2> = w.clone().reshape([4, 8]);
    let ours = linear_t(x.clone(), w2.clone());
    let reference = x.matmul(w2.transpose().unsqueeze::<4>());
    assert!(max_diff(ours.inner(), reference.inner()) < 1e-5);
}

#[test]
fn gelu_new_forward_and_backward_match_the_formula_under_autodiff() {
    let x = tensor([2, 3, 4, 5], 8).mul_scalar(4.0).require_grad();
    let w = tensor([2, 3, 4, 5], 9);
    // Without and with a (frozen) bias over the last dim, folded into the kernel.
    let bias = tensor([1, 1, 1, 5], 10).reshape([5]).inner();
    for with_bias in [false, true] {
        let (ours, v) = if with_bias {
            let b = Tensor::<Ad, 1>::from_inner(bias.clone());
            let v = x.clone() + b.clone().reshape([1, 1, 1, 5]);
            (qtune_kernels::bias_gelu_new(x.clone(), b), v)
        } else {
            (gelu_new(x.clone()), x.clone())
        };
        let c = (2.0f64 / std::f64::consts::PI).sqrt();
        let inner = (v.clone() + v.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
        let reference = v.mul_scalar(0.5) * inner.tanh().add_scalar(1.0);
        let fwd = max_diff(ours.clone().inner(), reference.clone().inner());
        assert!(fwd < 1e-5, "gelu_new (bias {with_bias}) differs by {fwd}");
        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (reference * w.clone()).sum().backward();
        let d = max_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
        assert!(d < 1e-5, "gelu_new (bias {with_bias}) grad differs by {d}");
    }
}

#[test]
fn attention_softmax_matches_mask_fill_softmax_under_autodiff() {
    let (b, h, t, l) = (2, 3, 4, 6);
    let s = tensor([b, h, t, l], 10).mul_scalar(3.0).require_grad();
    let w = tensor([b, h, t, l], 11);
    let mask = causal_mask(b, t, l);
    let div = 1.7f32;
    let ours = qtune_kernels::attention_softmax(s.clone(), Some(mask.clone()), div, DType::F32);
    let reference = burn::tensor::activation::softmax(
        s.clone()
            .div_scalar(div)
            .mask_fill(mask.expand([b, h, t, l]), f32::MIN),
        3,
    );
    assert!(max_diff(ours.clone().inner(), reference.clone().inner()) < 1e-6);
    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (reference * w).sum().backward();
    let d = max_diff(s.grad(&g1).unwrap(), s.grad(&g2).unwrap());
    assert!(d < 1e-6, "softmax grad differs by {d}");
}

/// Causal mask `[b, 1, t, l]` (queries are the last `t` of `l` positions) plus one fully masked
/// row (batch 1, query 0), as left padding makes.
fn causal_mask(b: usize, t: usize, l: usize) -> Tensor<Ad, 4, burn::tensor::Bool> {
    let mut bits = Vec::new();
    for bi in 0..b {
        for i in 0..t {
            for j in 0..l {
                bits.push(j > i + (l - t) || (bi == 1 && i == 0));
            }
        }
    }
    Tensor::from_data(TensorData::new(bits, [b, 1, t, l]), &Default::default())
}

#[test]
fn attention_matches_burn_ops_in_token_major_layout_under_autodiff() {
    // Queries shorter than keys (a KV-cache step) and more than one head and batch row.
    let (b, t, l, h, hd) = (2, 3, 5, 4, 6);
    let q = tensor([b, t, h, hd], 20).mul_scalar(2.0).require_grad();
    let k = tensor([b, l, h, hd], 21).mul_scalar(2.0).require_grad();
    let v = tensor([b, l, h, hd], 22).require_grad();
    let w = tensor([b, t, h, hd], 23);
    let mask = causal_mask(b, t, l);
    let div = (hd as f32).sqrt();

    let ours = qtune_kernels::attention(q.clone(), k.clone(), v.clone(), Some(mask.clone()), div);
    // The textbook formula in head-major layout with Burn's own ops.
    let heads = |x: Tensor<Ad, 4>| x.swap_dims(1, 2);
    let scores = heads(q.clone()).matmul(heads(k.clone()).swap_dims(2, 3));
    let p = burn::tensor::activation::softmax(
        scores
            .div_scalar(div)
            .mask_fill(mask.expand([b, h, t, l]), f32::MIN),
        3,
    );
    let reference = p.matmul(heads(v.clone())).swap_dims(1, 2);
    assert_eq!(ours.dims(), [b, t, h, hd]);
    let fwd = max_diff(ours.clone().inner(), reference.clone().inner());
    assert!(fwd < 1e-5, "attention forward differs by {fwd}");

    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (reference * w).sum().backward();
    for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
        let d = max_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
        assert!(d < 1e-5, "attention d{name} differs by {d}");
    }
}

#[test]
fn grouped_query_attention_equals_attention_on_repeated_kv_heads() {
    // 6 query heads over 2 kv heads (HF `repeat_kv`: query head i reads kv head i / 3).
    let (b, t, l, h, kv, hd) = (2, 3, 5, 6, 2, 4);
    let q = tensor([b, t, h, hd], 24).mul_scalar(2.0).require_grad();
    let k = tensor([b, l, kv, hd], 25).mul_scalar(2.0).require_grad();
    let v = tensor([b, l, kv, hd], 26).require_grad();
    let w = tensor([b, t, h, hd], 27);
    let mask = causal_mask(b, t, l);
    let div = (hd as f32).sqrt();
    let ours = qtune_kernels::attention(q.clone(), k.clone(), v.clone(), Some(mask.clone()), div);
    let repeat = |x: Tensor<Ad, 4>| {
        x.reshape([b, l, kv, 1, hd])
            .repeat_dim(3, h / kv)
            .reshape([b, l, h, hd])
    };
    let reference = qtune_kernels::attention(
        q.clone(),
        repeat(k.clone()),
        repeat(v.clone()),
        Some(mask),
        div,
    );
    let fwd = max_diff(ours.clone().inner(), reference.clone().inner());
    assert!(fwd == 0.0, "GQA forward differs by {fwd}");
    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (reference * w).sum().backward();
    for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
        let (a, r) = (x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
        assert_eq!(a.dims(), x.dims(), "d{name} shape");
        let d = max_diff(a, r);
        assert!(d < 1e-5, "GQA d{name} differs by {d}");
    }
}

#[test]
fn layer_norm_backward_matches_autodiff_through_the_formula() {
    let x = tensor([2, 3, 4, 16], 12)
        .mul_scalar(2.0)
        .add_scalar(0.3)
        .require_grad();
    let w: Tensor<Ad, 1> = tensor([1, 1, 1, 16], 13).reshape([16]).add_scalar(1.0);
    let b: Tensor<Ad, 1> = tensor([1, 1, 1, 16], 14).reshape([16]);
    let dy = tensor([2, 3, 4, 16], 15);
    let eps = 1e-5;
    let ours = qtune_kernels::layer_norm(x.clone(), w.clone(), b.clone(), eps);
    let (var, mean) = x.clone().var_mean_bias(3);
    let reference = (x.clone() - mean).div(var.add_scalar(eps).sqrt()) * w.unsqueeze::<4>()
        + b.unsqueeze::<4>();
    assert!(max_diff(ours.clone().inner(), reference.clone().inner()) < 1e-5);
    let g1 = (ours * dy.clone()).sum().backward();
    let g2 = (reference * dy).sum().backward();
    let d = max_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
    assert!(d < 1e-5, "layer norm grad differs by {d}");
}

#[test]
fn rotary_backward_is_the_inverse_rotation_and_matches_autodiff() {
    // GPT-J's layout: [B, T, H, head_dim] with rotary on the first 2·half dims only.
    let (b, t, h, hd, half) = (2, 3, 2, 8, 3);
    let x = tensor([b, t, h, hd], 16).require_grad();
    let dy = tensor([b, t, h, hd], 17);
    let angles: Tensor<Ad, 5> = tensor([b, t, 1, half], 18)
        .mul_scalar(3.0)
        .reshape([b, t, 1, half, 1]);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let ours = qtune_kernels::rotary(x.clone(), cos.clone(), sin.clone());
    // Reference through Burn ops (autodiff differentiates it).
    let x_rot = x.clone().narrow(3, 0, 2 * half).reshape([b, t, h, half, 2]);
    let (x1, x2) = (x_rot.clone().narrow(4, 0, 1), x_rot.narrow(4, 1, 1));
    let o1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let o2 = x2 * cos + x1 * sin;
    let rotated = Tensor::cat(vec![o1, o2], 4).reshape([b, t, h, 2 * half]);
    let reference = Tensor::cat(
        vec![rotated, x.clone().narrow(3, 2 * half, hd - 2 * half)],
        3,
    );
    assert!(max_diff(ours.clone().inner(), reference.clone().inner()) < 1e-6);
    let g1 = (ours * dy.clone()).sum().backward();
    let g2 = (reference * dy).sum().backward();
    let d = max_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
    assert!(d < 1e-6, "rotary grad differs by {d}");
}

#[test]
fn cross_entropy_matches_log_softmax_gather_under_autodiff() {
    use burn::tensor::Int;
    let (rows, vocab) = (5, 11);
    let x: Tensor<Ad, 2> = tensor([1, 1, rows, vocab], 19)
        .mul_scalar(6.0)
        .reshape([rows, vocab])
        .require_grad();
    let t: Vec<i64> = vec![0, 10, 3, 3, 7];
    let targets =
        Tensor::<Ad, 1, Int>::from_data(TensorData::new(t.clone(), [rows]), &Default::default());
    let w: Tensor<Ad, 1> = tensor([1, 1, 1, rows], 20).reshape([rows]);
    let ours = qtune_kernels::cross_entropy(x.clone(), targets.clone());
    let reference = burn::tensor::activation::log_softmax(x.clone(), 1)
        .gather(1, targets.reshape([rows, 1]))
        .reshape([rows])
        .neg();
    let d = ours.clone().inner().into_data().into_vec::<f32>().unwrap();
    let r = reference
        .clone()
        .inner()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let fwd = d
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(fwd < 1e-5, "nll differs by {fwd}");
    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (reference * w).sum().backward();
    let (a, b) = (x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
    let diff = a.sub(b).abs().max().into_scalar();
    assert!(diff < 1e-6, "cross-entropy grad differs by {diff}");
}

#[test]
fn linear_t_acc_adds_the_scaled_product_and_its_gradients() {
    let y = tensor([1, 2, 3, 5], 30).require_grad();
    let x = tensor([1, 2, 3, 4], 31).require_grad();
    let w = tensor([1, 1, 5, 4], 32).require_grad();
    let g = tensor([1, 2, 3, 5], 33);
    let w2 = || w.clone().reshape([5, 4]);
    let ours = qtune_kernels::linear_t_acc(y.clone(), x.clone(), w2(), 0.75);
    let reference = y.clone()
        + x.clone()
            .matmul(w2().transpose().unsqueeze())
            .mul_scalar(0.75);
    assert!(max_diff(ours.clone().inner(), reference.clone().inner()) < 1e-5);
    let g1 = (ours * g.clone()).sum().backward();
    let g2 = (reference * g).sum().backward();
    for (name, t) in [("y", &y), ("x", &x), ("w", &w)] {
        let d = max_diff(t.grad(&g1).unwrap(), t.grad(&g2).unwrap());
        assert!(d < 1e-5, "linear_t_acc d{name} differs by {d}");
    }
}

#[test]
fn lora_acc_equals_its_composition_with_and_without_dropout() {
    for dropout in [None, Some((0.25f32, 11u64))] {
        let y = tensor([1, 2, 3, 5], 50).require_grad();
        let x = tensor([1, 2, 3, 4], 51).require_grad();
        let a = tensor([1, 1, 2, 4], 52).require_grad();
        let b = tensor([1, 1, 5, 2], 53).require_grad();
        let g = tensor([1, 2, 3, 5], 54);
        let (a2, b2) = (|| a.clone().reshape([2, 4]), || b.clone().reshape([5, 2]));
        let opts = qtune_kernels::LoraOptions {
            scaling: 0.75,
            dropout,
        };
        let ours = qtune_kernels::lora_acc(y.clone(), x.clone(), [a2(), b2()], opts);
        let xd = match dropout {
            Some((p, seed)) => qtune_kernels::dropout(x.clone(), p as f64, seed),
            None => x.clone(),
        };
        let reference = qtune_kernels::linear_t_acc(y.clone(), linear_t(xd, a2()), b2(), 0.75);
        let fwd = max_diff(ours.clone().inner(), reference.clone().inner());
        assert!(
            fwd < 1e-6,
            "lora_acc forward differs by {fwd} ({dropout:?})"
        );
        let g1 = (ours * g.clone()).sum().backward();
        let g2 = (reference * g).sum().backward();
        for (name, t) in [("y", &y), ("x", &x), ("a", &a), ("b", &b)] {
            let d = max_diff(t.grad(&g1).unwrap(), t.grad(&g2).unwrap());
            assert!(d < 1e-5, "lora_acc d{name} differs by {d} ({dropout:?})");
        }
    }
}

#[test]
fn dropout_mask_is_a_function_of_the_seed_with_the_right_rate_and_scale() {
    let n = 1 << 16;
    let x = tensor([1, 1, 1, n], 40).add_scalar(2.0).require_grad(); // all values ≥ 1: no zeros
    let p = 0.25;
    let y = qtune_kernels::dropout(x.clone(), p, 7);
    let again = qtune_kernels::dropout(x.clone(), p, 7);
    let other = qtune_kernels::dropout(x.clone(), p, 8);
    let (xv, yv) = (
        x.clone().inner().into_data().into_vec::<f32>().unwrap(),
        y.clone().inner().into_data().into_vec::<f32>().unwrap(),
    );
    assert_eq!(
        yv,
        again.inner().into_data().into_vec::<f32>().unwrap(),
        "same seed, same mask"
    );
    let ov = other.inner().into_data().into_vec::<f32>().unwrap();
    let dropped = yv.iter().filter(|v| **v == 0.0).count();
    let rate = dropped as f64 / n as f64;
    assert!((rate - p).abs() < 0.01, "dropped fraction {rate}, want {p}");
    let same = yv
        .iter()
        .zip(&ov)
        .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
        .count();
    // Independent masks agree on p² + (1−p)² = 62.5 % of the positions.
    let agree = same as f64 / n as f64;
    assert!(
        (agree - 0.625).abs() < 0.02,
        "seeds 7 and 8 agree on {agree}"
    );
    for (xi, yi) in xv.iter().zip(&yv) {
        assert!(
            *yi == 0.0 || (*yi - xi / 0.75).abs() <= 1e-6 * xi.abs(),
            "{xi} → {yi}"
        );
    }
    // Backward: the same mask and scale applied to the output gradient.
    let w = tensor([1, 1, 1, n], 41);
    let g = (y.clone() * w.clone()).sum().backward();
    let dx = x.grad(&g).unwrap().into_data().into_vec::<f32>().unwrap();
    let wv = w.inner().into_data().into_vec::<f32>().unwrap();
    for i in 0..n {
        let want = if yv[i] == 0.0 { 0.0 } else { wv[i] / 0.75 };
        assert!(
            (dx[i] - want).abs() <= 1e-6,
            "dx[{i}] = {}, want {want}",
            dx[i]
        );
    }
}
