//! The fused ops on the GPU (bf16) vs the CPU reference (f32), forward and input gradients:
//! attention softmax, gelu_new (with and without fc_in's bias), LayerNorm, GPT-J's rotary,
//! cross-entropy, the attention core, counter-based dropout and the LoRA accumulate-GEMM.
//! Metric: max |GPU − CPU| / max |CPU|. Tolerances: about 2–3× what an H100 measured
//! (2026-12-06, noted at each), never below [`BF16_FLOOR`].

use burn::tensor::{Bool, DType, Tensor, TensorData};
use qtune_train::backend::{Cpu, Train};

use super::{host, rel, values, Failures, BF16_FLOOR};

/// Attention output: measured 1.08e-2 (the probabilities are rounded to bf16 before P·V, then
/// the output again).
const ATTENTION_FWD: f64 = 3e-2;
/// Attention dq, dk, dv: measured ≤ 7.4e-3.
const ATTENTION_GRAD: f64 = 2e-2;
/// gelu_new with fc_in's bias: measured 4.0e-3 forward, 6.0e-3 gradient.
const BIAS_GELU_FWD: f64 = 1e-2;
const BIAS_GELU_GRAD: f64 = 1.5e-2;
/// Dropout's kept values (x / (1 − p) rounded to bf16): measured 2.3e-3. The masks themselves
/// are compared bit for bit: counter-based dropout draws the same mask on both backends.
const DROPOUT: f64 = BF16_FLOOR;
/// The accumulate-GEMM y + 0.5·x·wᵀ and its gradients: measured dx, dw 2.6e-3; forward and dy
/// are bf16 GEMM outputs as in `gemm` (3.9e-3, one ulp at the max), so the GEMM tolerance.
const GEMM_ACC: f64 = super::gemm::GEMM_BF16;
/// Cross-entropy's per-row nll is computed in f32 from the same (bf16-representable) logits on
/// both sides: measured 1e-7, about one f32 ulp. 1e-6 leaves room for another reduction order
/// over the 288 logits of a row, and is still far below one bf16 rounding (≥ 2e-3).
const CROSS_ENTROPY_FWD: f64 = 1e-6;
/// Cross-entropy's gradient (softmax − one-hot, in bf16): measured 1.8e-3.
const CROSS_ENTROPY_GRAD: f64 = BF16_FLOOR;
/// LayerNorm: measured 4.8e-3 forward (the normalised row is rounded, then scaled and shifted
/// by bf16 w, b), 3.7e-3 gradient.
const LAYER_NORM_FWD: f64 = 1.5e-2;
const LAYER_NORM_GRAD: f64 = 1.2e-2;
/// GPT-J's rotary, forward and gradient: measured 2.8e-3.
const ROTARY: f64 = BF16_FLOOR;
/// Attention softmax: measured 1.8e-3 forward, 2.1e-3 gradient.
const SOFTMAX: f64 = BF16_FLOOR;
/// gelu_new: measured 1.9e-3 forward, 3.5e-3 gradient.
const GELU_FWD: f64 = BF16_FLOOR;
const GELU_GRAD: f64 = 1e-2;

/// Runs every fused-op check, printing one JSON line per group.
pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    let (b, h, t, l) = (2usize, 4usize, 40usize, 72usize);
    let n = b * h * t * l;
    let (vs, vw) = (values(n, 11), values(n, 12));
    // Causal over the last t of l keys, and three fully masked rows in the second batch.
    let mut bits = Vec::with_capacity(b * t * l);
    for bi in 0..b {
        for i in 0..t {
            for j in 0..l {
                bits.push(j > i + (l - t) || (bi == 1 && i < 3));
            }
        }
    }

    let hd = 32;
    let dims = [b, t, l, h];
    // Every head its own k, v; then grouped-query (two query heads per kv head), whose kv
    // gradients sum over each group.
    for (h_kv, tag) in [(h, "attention"), (h / 2, "gqa_attention")] {
        let heads = (hd, h_kv);
        let cpu = attention::<Cpu>(
            &Default::default(),
            &vs,
            &vw,
            &bits,
            dims,
            heads,
            DType::F32,
        )?;
        let gpu = attention::<Train>(dev, &vs, &vw, &bits, dims, heads, DType::BF16)?;
        let names = [
            (format!("{tag}_fwd"), ATTENTION_FWD),
            (format!("{tag}_dq"), ATTENTION_GRAD),
            (format!("{tag}_dk"), ATTENTION_GRAD),
            (format!("{tag}_dv"), ATTENTION_GRAD),
        ];
        let names = names.each_ref().map(|(n, t)| (n.as_str(), *t));
        print_rel_errs(fails, names, gpu, cpu, []);
    }

    let cpu = dropout_gemm_acc_bias_gelu::<Cpu>(&Default::default(), &vs, &vw, DType::F32, fails)?;
    let gpu = dropout_gemm_acc_bias_gelu::<Train>(dev, &vs, &vw, DType::BF16, fails)?;
    let mask_mismatch = cpu[0]
        .iter()
        .zip(&gpu[0])
        .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
        .count();
    fails.at_most(
        "fused_ops dropout_mask_mismatches",
        mask_mismatch as f64,
        0.0,
    );
    let dropout_values = cpu[0].len();
    let names = [
        ("dropout", DROPOUT),
        ("gemm_acc_fwd", GEMM_ACC),
        ("gemm_acc_dy", GEMM_ACC),
        ("gemm_acc_dx", GEMM_ACC),
        ("gemm_acc_dw", GEMM_ACC),
        ("bias_gelu_fwd", BIAS_GELU_FWD),
        ("bias_gelu_grad", BIAS_GELU_GRAD),
    ];
    print_rel_errs(
        fails,
        names,
        gpu,
        cpu,
        [
            ("dropout_mask_mismatches", mask_mismatch.into()),
            ("dropout_values", dropout_values.into()),
        ],
    );

    let (rows, vocab) = (b * h * t / 8, l * 4);
    let cpu = cross_entropy::<Cpu>(&Default::default(), &vs, rows, vocab, DType::F32)?;
    let gpu = cross_entropy::<Train>(dev, &vs, rows, vocab, DType::BF16)?;
    let names = [
        ("cross_entropy_fwd", CROSS_ENTROPY_FWD),
        ("cross_entropy_grad", CROSS_ENTROPY_GRAD),
    ];
    print_rel_errs(fails, names, gpu, cpu, []);
    // GPT-J's vocabulary: 6,300 vectors a row, many full passes of the row kernels' 4 loads per
    // lane (128 vectors) and then a partial one.
    let (rows, vocab) = (4, 50_400);
    let wide = values(rows * vocab, 13);
    let cpu = cross_entropy::<Cpu>(&Default::default(), &wide, rows, vocab, DType::F32)?;
    let gpu = cross_entropy::<Train>(dev, &wide, rows, vocab, DType::BF16)?;
    let names = [
        ("cross_entropy_50400_fwd", CROSS_ENTROPY_FWD),
        ("cross_entropy_50400_grad", CROSS_ENTROPY_GRAD),
    ];
    print_rel_errs(fails, names, gpu, cpu, []);

    let dims = [b, h, t, l];
    let cpu = layer_norm_rotary::<Cpu>(&Default::default(), &vs, &vw, dims, DType::F32)?;
    let gpu = layer_norm_rotary::<Train>(dev, &vs, &vw, dims, DType::BF16)?;
    let names = [
        ("layer_norm_fwd", LAYER_NORM_FWD),
        ("layer_norm_grad", LAYER_NORM_GRAD),
        ("rotary_fwd", ROTARY),
        ("rotary_grad", ROTARY),
    ];
    print_rel_errs(fails, names, gpu, cpu, []);
    // A few rows of GPT-J's width, as decoding (the forward takes a cube per row on CUDA).
    for rows in [1usize, 3] {
        let dims = [1, rows, 1, 4096];
        let (vs, vw) = (&vs[..rows * 4096], &vw[..rows * 4096]);
        let cpu = layer_norm_rotary::<Cpu>(&Default::default(), vs, vw, dims, DType::F32)?;
        let gpu = layer_norm_rotary::<Train>(dev, vs, vw, dims, DType::BF16)?;
        let (fwd, grad) = (
            format!("layer_norm_{rows}_rows_fwd"),
            format!("layer_norm_{rows}_rows_grad"),
        );
        let names = [
            (fwd.as_str(), LAYER_NORM_FWD),
            (grad.as_str(), LAYER_NORM_GRAD),
            ("rotary_rows_fwd", ROTARY),
            ("rotary_rows_grad", ROTARY),
        ];
        print_rel_errs(fails, names, gpu, cpu, []);
    }

    let cpu = softmax_gelu::<Cpu>(&Default::default(), &vs, &vw, &bits, dims, DType::F32)?;
    let gpu = softmax_gelu::<Train>(dev, &vs, &vw, &bits, dims, DType::BF16)?;
    let names = [
        ("softmax_fwd", SOFTMAX),
        ("softmax_grad", SOFTMAX),
        ("gelu_fwd", GELU_FWD),
        ("gelu_grad", GELU_GRAD),
    ];
    print_rel_errs(fails, names, gpu, cpu, []);
    Ok(())
}

/// Prints one `fused_ops` JSON line: output `i` of the GPU and of the CPU, under `names[i] =
/// (name, tolerance)`, as `{name}_rel_err`, the relative error, added to `fails` beyond its
/// tolerance; then the `extra` entries.
fn print_rel_errs<const K: usize, const N: usize>(
    fails: &mut Failures,
    names: [(&str, f64); K],
    gpu: [Vec<f32>; K],
    cpu: [Vec<f32>; K],
    extra: [(&str, serde_json::Value); N],
) {
    let mut line = serde_json::Map::new();
    line.insert("check".into(), "fused_ops".into());
    for (((name, tol), gpu), cpu) in names.into_iter().zip(gpu).zip(cpu) {
        let key = format!("{name}_rel_err");
        let value = fails.at_most(&format!("fused_ops {key}"), rel(gpu, cpu), tol);
        line.insert(key, value.into());
    }
    for (key, value) in extra {
        line.insert(key.into(), value);
    }
    println!("{}", serde_json::Value::Object(line));
}

/// Fused attention softmax (causal + a fully masked row) and gelu_new: forward and input
/// gradient, GPU (bf16 probabilities / activations) vs CPU (f32).
fn softmax_gelu<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    vs: &[f32],
    vw: &[f32],
    bits: &[bool],
    dims: [usize; 4],
    act: DType,
) -> anyhow::Result<[Vec<f32>; 4]> {
    let [b, h, t, l] = dims;
    let host4 = |x: Tensor<B::InnerBackend, 4>| host(x.reshape([b * h, t, l]));
    let s = Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, DType::F32))
        .require_grad();
    let w = Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, DType::F32));
    let m = Tensor::<B, 4, Bool>::from_data(TensorData::new(bits.to_vec(), [b, 1, t, l]), dev);
    let p = qtune_kernels::attention_softmax(s.clone(), Some(m), 1.3, act);
    let g = (p.clone().cast(DType::F32) * w.clone()).sum().backward();
    let ds = s
        .grad(&g)
        .ok_or_else(|| anyhow::anyhow!("no softmax grad"))?;
    let x = Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, act))
        .mul_scalar(4.0)
        .require_grad();
    let y = qtune_kernels::gelu_new(x.clone());
    let g = (y.clone().cast(DType::F32) * w).sum().backward();
    let dx = x.grad(&g).ok_or_else(|| anyhow::anyhow!("no gelu grad"))?;
    Ok([host4(p.inner())?, host4(ds)?, host4(y.inner())?, host4(dx)?])
}

/// LayerNorm (frozen w, b) and rotary on [B, T, H, hd] = dims: forward and input grads.
fn layer_norm_rotary<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    vs: &[f32],
    vw: &[f32],
    dims: [usize; 4],
    act: DType,
) -> anyhow::Result<[Vec<f32>; 4]> {
    let [b, t, h, l] = dims;
    let host4 = |x: Tensor<B::InnerBackend, 4>| host(x.reshape([b * t, h, l]));
    let x =
        Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, act)).require_grad();
    let w = Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, DType::F32));
    let lw = Tensor::<B, 1>::from_data(TensorData::new(vw[..l].to_vec(), [l]), (dev, act))
        .add_scalar(1.0);
    let lb = Tensor::<B, 1>::from_data(TensorData::new(vs[..l].to_vec(), [l]), (dev, act));
    let y = qtune_kernels::layer_norm(x.clone(), lw, lb, 1e-5);
    let g = (y.clone().cast(DType::F32) * w.clone()).sum().backward();
    let dx = x
        .grad(&g)
        .ok_or_else(|| anyhow::anyhow!("no layer norm grad"))?;
    let half = 20.min(l / 2);
    let ang = Tensor::<B, 5>::from_data(
        TensorData::new(
            vs[..b * t * half]
                .iter()
                .map(|v| v * 9.0)
                .collect::<Vec<f32>>(),
            [b, t, 1, half, 1],
        ),
        (dev, DType::F32),
    );
    let x2 =
        Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, act)).require_grad();
    let r = qtune_kernels::rotary(x2.clone(), ang.clone().cos(), ang.sin());
    let g = (r.clone().cast(DType::F32) * w).sum().backward();
    let dr = x2
        .grad(&g)
        .ok_or_else(|| anyhow::anyhow!("no rotary grad"))?;
    Ok([host4(y.inner())?, host4(dx)?, host4(r.inner())?, host4(dr)?])
}

/// Fused cross-entropy: per-row nll and the logits' gradient (bf16 logits on the GPU).
fn cross_entropy<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    vs: &[f32],
    rows: usize,
    vocab: usize,
    act: DType,
) -> anyhow::Result<[Vec<f32>; 2]> {
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(
            vs[..rows * vocab]
                .iter()
                .map(|v| v * 8.0)
                .collect::<Vec<f32>>(),
            [rows, vocab],
        ),
        (dev, act),
    )
    .require_grad();
    let t: Vec<i64> = (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect();
    let t = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(t, [rows]), dev);
    let nll = qtune_kernels::cross_entropy(x.clone(), t);
    let g = nll.clone().sum().backward();
    let dx = x
        .grad(&g)
        .ok_or_else(|| anyhow::anyhow!("no cross-entropy grad"))?;
    Ok([
        host(nll.inner().reshape([1, 1, rows]))?,
        host(dx.reshape([1, rows, vocab]))?,
    ])
}

/// The attention core (token-major q [b, t, h, hd], k, v [b, l, h, hd], same mask):
/// output and the three input gradients.
#[allow(clippy::too_many_arguments)]
fn attention<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    vs: &[f32],
    vw: &[f32],
    bits: &[bool],
    [b, t, l, h]: [usize; 4],
    (hd, h_kv): (usize, usize),
    act: DType,
) -> anyhow::Result<[Vec<f32>; 4]> {
    let mk = |off: usize, rows: usize, heads: usize, scale: f32| {
        let v: Vec<f32> = vs[off..off + b * rows * heads * hd]
            .iter()
            .map(|x| x * scale)
            .collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, [b, rows, heads, hd]), (dev, act))
            .require_grad()
    };
    let (q, k, v) = (
        mk(0, t, h, 3.0),
        mk(1000, l, h_kv, 3.0),
        mk(2000, l, h_kv, 1.0),
    );
    let w = Tensor::<B, 4>::from_data(
        TensorData::new(vw[..b * t * h * hd].to_vec(), [b, t, h, hd]),
        (dev, DType::F32),
    );
    let m = Tensor::<B, 4, Bool>::from_data(TensorData::new(bits.to_vec(), [b, 1, t, l]), dev);
    let o = qtune_kernels::attention(q.clone(), k.clone(), v.clone(), Some(m), 5.0);
    let g = (o.clone().cast(DType::F32) * w).sum().backward();
    let grad = |x: &Tensor<B, 4>| {
        x.grad(&g)
            .ok_or_else(|| anyhow::anyhow!("no attention grad"))
            .and_then(|d| {
                let [db, dr, dh, dd] = d.dims();
                host(d.reshape([db, dr, dh * dd]))
            })
    };
    Ok([
        host(o.inner().reshape([b, t, h * hd]))?,
        grad(&q)?,
        grad(&k)?,
        grad(&v)?,
    ])
}

/// Counter-based dropout (the masks must agree bit for bit) and the LoRA-style
/// accumulate-GEMM y + 0.5·x·wᵀ with its three gradients.
fn dropout_gemm_acc_bias_gelu<
    B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend,
>(
    dev: &B::Device,
    vs: &[f32],
    vw: &[f32],
    act: DType,
    fails: &mut Failures,
) -> anyhow::Result<[Vec<f32>; 7]> {
    let n = vs.len();
    let x = Tensor::<B, 1>::from_data(TensorData::new(vs.to_vec(), [n]), (dev, act));
    let d = qtune_kernels::dropout(x, 0.3, 0xDEAD_BEEF_1234_5678);
    let (m, k, o) = (96usize, 64usize, 80usize);
    let mk = |v: &[f32], shape: [usize; 2]| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), shape), (dev, act)).require_grad()
    };
    let y = mk(&vs[..m * o], [m, o]);
    let x = mk(&vw[..m * k], [m, k]);
    let w = mk(&vs[m * o..m * o + o * k], [o, k]);
    let g = Tensor::<B, 2>::from_data(
        TensorData::new(vw[m * k..m * k + m * o].to_vec(), [m, o]),
        (dev, DType::F32),
    );
    let z = qtune_kernels::linear_t_acc(y.clone(), x.clone(), w.clone(), 0.5);
    // The same on an exclusively owned y (in place; here a Burn kernel's output, whose
    // 80-wide bf16 rows are pitched, so it is first made dense) and with separate ops;
    // both must equal z (z itself takes the shared-y fallback).
    let yi = y.clone().mul_scalar(1.0);
    let z_own = qtune_kernels::linear_t_acc(yi, x.clone(), w.clone(), 0.5);
    let z_ops = y.clone() + qtune_kernels::linear_t(x.clone(), w.clone()).mul_scalar(0.5);
    let (hz, ho, hs) = (
        host(z.clone().inner().unsqueeze::<3>())?,
        host(z_own.inner().unsqueeze::<3>())?,
        host(z_ops.inner().unsqueeze::<3>())?,
    );
    let (copy_vs_ops, in_place_vs_ops) = (rel(hz.clone(), hs.clone()), rel(ho, hs.clone()));
    println!(
        "{}",
        serde_json::json!({"check": "gemm_acc_paths", "backend": format!("{act:?}"),
            "copy_vs_ops": copy_vs_ops, "in_place_vs_ops": in_place_vs_ops,
            "y_max": hs.iter().fold(0f32, |m, v| m.max(v.abs())), "z_max": hz.iter().fold(0f32, |m, v| m.max(v.abs()))})
    );
    // Exactly equal, as the comment above says: the three paths are one arithmetic (measured
    // 0.0 on an H100 and on the CPU); a difference means the in-place or copy path read or
    // wrote the wrong rows.
    fails.at_most(
        &format!("gemm_acc_paths {act:?} copy_vs_ops"),
        copy_vs_ops,
        0.0,
    );
    fails.at_most(
        &format!("gemm_acc_paths {act:?} in_place_vs_ops"),
        in_place_vs_ops,
        0.0,
    );
    let grads = (z.clone().cast(DType::F32) * g.clone()).sum().backward();
    let grad = |t: &Tensor<B, 2>,
                grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| {
        t.grad(grads)
            .ok_or_else(|| anyhow::anyhow!("no accumulate-GEMM / bias-gelu grad"))
            .and_then(|d| host(d.unsqueeze::<3>()))
    };
    // gelu_new with fc_in's bias folded in.
    let bias = Tensor::<B, 1>::from_data(TensorData::new(vw[..o].to_vec(), [o]), (dev, act));
    let gx = mk(&vs[..m * o], [m, o]);
    let gy = qtune_kernels::bias_gelu_new(gx.clone().mul_scalar(3.0), bias);
    let ggrads = (gy.clone().cast(DType::F32) * g).sum().backward();
    Ok([
        host(d.reshape([1, 1, n]))?,
        host(z.inner().unsqueeze::<3>())?,
        grad(&y, &grads)?,
        grad(&x, &grads)?,
        grad(&w, &grads)?,
        host(gy.inner().unsqueeze::<3>())?,
        grad(&gx, &ggrads)?,
    ])
}
