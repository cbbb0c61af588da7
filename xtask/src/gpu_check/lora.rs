//! LoRA's fused adapter op (`qtune_kernels::lora_acc`) on the GPU vs the CPU reference: f32
//! factors and bf16 activations on the GPU (as in training: the factors are cast in the same
//! launch as the input's dropout, their gradients written in f32 by the GEMMs), all f32 on the
//! CPU; forward and the gradients of y, x, A and B, with dropout (the mask is counter-based, so
//! the same on both) and without. Also the loss's row selection (`qtune_kernels::select_rows`),
//! whose CUDA backward scatters the rows' gradients.

use burn::tensor::{DType, Tensor, TensorData};
use qtune_kernels::LoraOptions;
use qtune_train::backend::{Cpu, Train};

use super::{host, rel, values, Failures};

/// The adapter's output and its four gradients are bf16 GEMM results (dA, dB written in f32
/// from bf16 operands), as the accumulate-GEMM's: the GEMM tolerance.
const LORA: f64 = super::gemm::GEMM_BF16;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    for dropout in [None, Some((0.3f32, 0x5EED_0123_4567_89AB_u64))] {
        let cpu = lora_grads::<Cpu>(&Default::default(), DType::F32, dropout)?;
        let gpu = lora_grads::<Train>(dev, DType::BF16, dropout)?;
        let mut line = serde_json::Map::new();
        line.insert("check".into(), "lora_acc".into());
        line.insert("dropout".into(), dropout.is_some().into());
        for ((name, g), c) in ["fwd", "dy", "dx", "da", "db"]
            .into_iter()
            .zip(gpu)
            .zip(cpu)
        {
            let what = format!("lora_acc dropout={} {name}_rel_err", dropout.is_some());
            line.insert(
                format!("{name}_rel_err"),
                fails.at_most(&what, rel(g, c), LORA).into(),
            );
        }
        println!("{}", serde_json::Value::Object(line));
    }
    // Row selection moves values: forward and gradient must be exact (bf16 in, bf16 out).
    let cpu = select_grads::<Cpu>(&Default::default(), DType::F32)?;
    let gpu = select_grads::<Train>(dev, DType::BF16)?;
    let (fwd, dx) = (
        rel(gpu[0].clone(), cpu[0].clone()),
        rel(gpu[1].clone(), cpu[1].clone()),
    );
    println!(
        "{}",
        serde_json::json!({"check": "select_rows",
            "fwd_rel_err": fails.at_most("select_rows fwd_rel_err", fwd, 0.0),
            "dx_rel_err": fails.at_most("select_rows dx_rel_err", dx, 0.0)})
    );
    Ok(())
}

/// Rows 1, 4, 5, 9 of `x [12, 40]` and the gradient of `Σ rows ⊙ g` (zero on the other rows),
/// in bf16 values on both backends (the CPU's f32 holds them exactly).
fn select_grads<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    dtype: DType,
) -> anyhow::Result<[Vec<f32>; 2]> {
    let (n, d, rows) = (12usize, 40usize, [1i64, 4, 5, 9]);
    let bf = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| burn::tensor::bf16::from_f32(x).to_f32())
            .collect()
    };
    let x = Tensor::<B, 2>::from_data(TensorData::new(bf(values(n * d, 71)), [n, d]), (dev, dtype))
        .require_grad();
    let g = Tensor::<B, 2>::from_data(
        TensorData::new(bf(values(rows.len() * d, 72)), [rows.len(), d]),
        (dev, dtype),
    );
    let y = qtune_kernels::select_rows(x.clone(), &rows);
    let grads = (y.clone() * g).sum().backward();
    let dx = x
        .grad(&grads)
        .ok_or_else(|| anyhow::anyhow!("select_rows: no gradient"))?;
    Ok([
        host(y.inner().unsqueeze::<3>())?,
        host(dx.unsqueeze::<3>())?,
    ])
}

/// `y + 0.5·(dropout(x)·Aᵀ)·Bᵀ` for `y [96, 80]`, `x [96, 64]`, `A [8, 64]`, `B [80, 8]` (the
/// factors in f32, the activations in `act`), and the gradients of `Σ out ⊙ g`.
fn lora_grads<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
    dev: &B::Device,
    act: DType,
    dropout: Option<(f32, u64)>,
) -> anyhow::Result<[Vec<f32>; 5]> {
    let (m, k, o, r) = (96usize, 64usize, 80usize, 8usize);
    let mk = |seed: u64, shape: [usize; 2], dtype: DType| {
        let v = values(shape[0] * shape[1], seed);
        Tensor::<B, 2>::from_data(TensorData::new(v, shape), (dev, dtype)).require_grad()
    };
    let (y, x) = (mk(61, [m, o], act), mk(62, [m, k], act));
    let (a, b) = (mk(63, [r, k], DType::F32), mk(64, [o, r], DType::F32));
    let g = Tensor::<B, 2>::from_data(
        TensorData::new(values(m * o, 65), [m, o]),
        (dev, DType::F32),
    );
    let opts = LoraOptions {
        scaling: 0.5,
        dropout,
    };
    let out = qtune_kernels::lora_acc(y.clone(), x.clone(), [a.clone(), b.clone()], opts);
    let grads = (out.clone().cast(DType::F32) * g).sum().backward();
    let grad = |t: &Tensor<B, 2>| {
        t.grad(&grads)
            .ok_or_else(|| anyhow::anyhow!("lora_acc: no gradient"))
            .and_then(|d| host(d.unsqueeze::<3>()))
    };
    Ok([
        host(out.inner().unsqueeze::<3>())?,
        grad(&y)?,
        grad(&x)?,
        grad(&a)?,
        grad(&b)?,
    ])
}
