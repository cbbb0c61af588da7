//! The Llama family's fused ops on the CPU reference: `rms_norm`, `silu_mul`, `rotary_half`.
//! - forward: bit for bit the Burn-op code `qtune-llama` ran before (HF `LlamaRMSNorm`,
//!   `silu(gate) * up`, `rotate_half` RoPE), in f32;
//! - hand-written backward: the gradient autodiff gives through that Burn-op code (f32, 1e-6
//!   relative), and central finite differences of the fused forward.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use qtune_kernels::{rms_norm, rotary_half, silu_mul, QBackend, RotaryOptions};
use qtune_testkit::values;

type Ad = Autodiff<NdArray>;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn host<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Largest `|a − b|` relative to the largest `|b|`.
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Central differences of `loss` at a few coordinates of `v` against the analytic `grad`.
fn check_fd(what: &str, v: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f32) {
    let h = 1e-2f32;
    let n = v.len();
    for idx in [0, 1, n / 3, n / 2 + 1, n - 1] {
        let (mut p, mut m) = (v.to_vec(), v.to_vec());
        p[idx] += h;
        m[idx] -= h;
        let fd = (loss(&p) - loss(&m)) / (2.0 * h);
        assert!(
            (fd - grad[idx]).abs() <= 1e-2 * grad[idx].abs().max(0.1),
            "{what} [{idx}]: finite difference {fd} vs gradient {}",
            grad[idx]
        );
    }
}

/// The Burn-op RMSNorm `qtune-llama` ran before the fused op (HF `LlamaRMSNorm`).
fn rms_norm_ops<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let var = x.clone().powi_scalar(2).mean_dim(2);
    let normed = x * var.add_scalar(eps).sqrt().recip();
    let d = w.dims()[0];
    normed.cast(dtype) * w.cast(dtype).reshape([1, 1, d])
}

#[test]
fn rms_norm_equals_hf_llama_rms_norm_and_its_autodiff() {
    let (b, t, d) = (2, 3, 40);
    let eps = 1e-6;
    let xv = values(b * t * d, 1, 3.0);
    let wv: Vec<f32> = values(d, 2, 0.5).iter().map(|v| v + 1.0).collect();
    let gv = values(b * t * d, 3, 1.0);
    let g = tensor::<Ad, 3>(&gv, [b, t, d]);
    let w = tensor::<Ad, 1>(&wv, [d]);

    let x = tensor::<Ad, 3>(&xv, [b, t, d]).require_grad();
    let ours = rms_norm(x.clone(), w.clone(), eps as f32);
    let xr = tensor::<Ad, 3>(&xv, [b, t, d]).require_grad();
    let reference = rms_norm_ops(xr.clone(), w.clone(), eps);
    assert_eq!(
        bits(&host(ours.clone().inner())),
        bits(&host(reference.clone().inner())),
        "forward differs from the Burn-op RMSNorm"
    );

    let dx = host(x.grad(&(ours * g.clone()).sum().backward()).unwrap());
    let dx_r = host(xr.grad(&(reference * g.clone()).sum().backward()).unwrap());
    let err = max_rel(&dx, &dx_r);
    assert!(err < 1e-6, "dx vs autodiff through the Burn ops: {err}");

    let (wi, gi) = (w.inner(), g.inner());
    check_fd("rms_norm dx", &xv, &dx, |v| {
        let y = rms_norm(tensor::<NdArray, 3>(v, [b, t, d]), wi.clone(), eps as f32);
        (y * gi.clone()).sum().into_scalar()
    });
}

#[test]
fn silu_mul_equals_silu_times_up_and_its_autodiff() {
    let shape = [2, 3, 7, 5];
    let n: usize = shape.iter().product();
    let (gv, uv, wv) = (values(n, 4, 6.0), values(n, 5, 2.0), values(n, 6, 1.0));
    let w = tensor::<Ad, 4>(&wv, shape);

    let gate = tensor::<Ad, 4>(&gv, shape).require_grad();
    let up = tensor::<Ad, 4>(&uv, shape).require_grad();
    let ours = silu_mul(gate.clone(), up.clone());
    let gate_r = tensor::<Ad, 4>(&gv, shape).require_grad();
    let up_r = tensor::<Ad, 4>(&uv, shape).require_grad();
    let reference = burn::tensor::activation::silu(gate_r.clone()) * up_r.clone();
    assert_eq!(
        bits(&host(ours.clone().inner())),
        bits(&host(reference.clone().inner())),
        "forward differs from silu(gate) * up"
    );

    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (reference * w.clone()).sum().backward();
    let (dg, du) = (host(gate.grad(&g1).unwrap()), host(up.grad(&g1).unwrap()));
    let (dg_r, du_r) = (
        host(gate_r.grad(&g2).unwrap()),
        host(up_r.grad(&g2).unwrap()),
    );
    let (eg, eu) = (max_rel(&dg, &dg_r), max_rel(&du, &du_r));
    assert!(
        eg < 1e-6 && eu < 1e-6,
        "dgate {eg}, dup {eu} vs autodiff through the Burn ops"
    );

    let wi = w.clone().inner();
    let loss = |g: &[f32], u: &[f32]| {
        let y = silu_mul(
            tensor::<NdArray, 4>(g, shape),
            tensor::<NdArray, 4>(u, shape),
        );
        (y * wi.clone()).sum().into_scalar()
    };
    check_fd("silu_mul dgate", &gv, &dg, |v| loss(v, &uv));
    check_fd("silu_mul dup", &uv, &du, |v| loss(&gv, v));

    // Only one input tracked (e.g. a frozen up branch): its gradient alone, the same values.
    let gate_only = tensor::<Ad, 4>(&gv, shape).require_grad();
    let y = silu_mul(gate_only.clone(), tensor::<Ad, 4>(&uv, shape));
    let dg_only = host(gate_only.grad(&(y * w).sum().backward()).unwrap());
    assert_eq!(bits(&dg_only), bits(&dg));
}

/// The Burn-op rotate-half RoPE `qtune-llama` ran before the fused op (HF
/// `apply_rotary_pos_emb`), with `sin` negated for the inverse rotation.
fn rotate_half_ops<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 5>,
    sin: Tensor<B, 5>,
) -> Tensor<B, 4> {
    let [b, t, _, hd] = x.dims();
    let half = hd / 2;
    let dtype = x.dtype();
    let cos = cos.cast(dtype).reshape([b, t, 1, half]);
    let sin = sin.cast(dtype).reshape([b, t, 1, half]);
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let lo = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let hi = x2 * cos + x1 * sin;
    Tensor::cat(vec![lo, hi], 3)
}

fn rotary_half_inverse(x: Tensor<Ad, 4>, cos: Tensor<Ad, 5>, sin: Tensor<Ad, 5>) -> Tensor<Ad, 4> {
    let r = RotaryOptions {
        cos: cos.into_primitive().tensor(),
        sin: sin.into_primitive().tensor(),
        inverse: true,
    };
    let y = <Ad as QBackend>::q_rotary_half(x.into_primitive().tensor(), r);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[test]
fn rotary_half_equals_hf_rotate_half_its_inverse_and_autodiff() {
    let (b, t, h, hd) = (2, 3, 4, 12);
    let half = hd / 2;
    let n = b * t * h * hd;
    let (xv, gv) = (values(n, 7, 2.0), values(n, 8, 1.0));
    let angles = tensor::<Ad, 5>(&values(b * t * half, 9, 3.0), [b, t, 1, half, 1]);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let g = tensor::<Ad, 4>(&gv, [b, t, h, hd]);

    for inverse in [false, true] {
        let x = tensor::<Ad, 4>(&xv, [b, t, h, hd]).require_grad();
        let ours = if inverse {
            rotary_half_inverse(x.clone(), cos.clone(), sin.clone())
        } else {
            rotary_half(x.clone(), cos.clone(), sin.clone())
        };
        let xr = tensor::<Ad, 4>(&xv, [b, t, h, hd]).require_grad();
        let s = if inverse {
            sin.clone().neg()
        } else {
            sin.clone()
        };
        let reference = rotate_half_ops(xr.clone(), cos.clone(), s);
        assert_eq!(
            bits(&host(ours.clone().inner())),
            bits(&host(reference.clone().inner())),
            "forward (inverse {inverse}) differs from the Burn-op rotate_half"
        );
        let dx = host(
            x.grad(&(ours.clone() * g.clone()).sum().backward())
                .unwrap(),
        );
        let dx_r = host(xr.grad(&(reference * g.clone()).sum().backward()).unwrap());
        let err = max_rel(&dx, &dx_r);
        assert!(err < 1e-6, "dx (inverse {inverse}) vs autodiff: {err}");
        let (ci, si, gi) = (cos.clone().inner(), sin.clone().inner(), g.clone().inner());
        check_fd("rotary_half dx", &xv, &dx, |v| {
            let x = tensor::<NdArray, 4>(v, [b, t, h, hd]);
            let r = RotaryOptions {
                cos: ci.clone().into_primitive().tensor(),
                sin: si.clone().into_primitive().tensor(),
                inverse,
            };
            let y = <NdArray as QBackend>::q_rotary_half(x.into_primitive().tensor(), r);
            (Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(y)) * gi.clone())
                .sum()
                .into_scalar()
        });
        if !inverse {
            // Turning back gives x again (up to f32 rounding).
            let back = host(rotary_half_inverse(ours, cos.clone(), sin.clone()).inner());
            let err = max_rel(&back, &xv);
            assert!(err < 1e-6, "inverse(rotary_half(x)) vs x: {err}");
        }
    }
}
